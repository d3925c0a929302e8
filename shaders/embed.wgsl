// embed: being written

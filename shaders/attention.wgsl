// attention: being written

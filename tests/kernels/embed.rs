// embed kernel tests: being written

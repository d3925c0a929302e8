// sample kernel tests: being written

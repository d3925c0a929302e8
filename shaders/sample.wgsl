// sample: being written

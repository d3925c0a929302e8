// matmul: being written

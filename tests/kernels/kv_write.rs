// kv_write kernel tests: being written

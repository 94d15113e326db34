pytest_plugins = [
    "tests.plugins.embedded",
    "tests.plugins.redis_server",
    "tests.plugins.triton_server",
    "tests.plugins.vllm_server",
]

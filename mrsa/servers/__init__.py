"""Code that starts inference servers: the embedded model, the bundled vLLM and Triton, their private environments."""

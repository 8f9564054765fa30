"""LLM serving: the transformers engine, speculative decoding and the Ray Serve deployments."""

"""Front doors over the runtime's API: the `gpt2-onnx` command line and the OpenAI-compatible
server. The runtime (gpt2_onnx) imports nothing from here; these hold no decoding logic."""

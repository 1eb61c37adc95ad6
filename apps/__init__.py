"""Front doors over the runtime's API: the `gpt2-onnx` command line, the OpenAI-compatible
server, batch jobs and Ray. The runtime (gpt2_onnx) imports nothing from here; these hold
no decoding logic."""

"""Side-by-side benchmarks and the quality report (`gpt2-onnx bench`). Needs the `bench` extra."""

"""Front doors over the runtime's API (batch jobs, Ray): thin layers holding no decoding logic."""

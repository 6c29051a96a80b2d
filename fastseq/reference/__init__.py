"""Pure-PyTorch implementations of every op: the CPU fallback and the test oracle."""

"""The runtime: data sets, the training loop, checkpoints."""

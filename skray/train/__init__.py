"""Training: the DeepSpeed engine, the per-worker loop, and the TorchTrainer that launches it."""

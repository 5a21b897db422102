"""The diffusion model's parts, generation, the evaluator network and training checkpoints."""

"""The model registry: the champion gate, the per-model lock, and each version's model card."""

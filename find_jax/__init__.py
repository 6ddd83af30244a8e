"""find-jax: FIND (Fine-tuning Initial Noise Distribution with policy optimization) in JAX/Flax."""

__version__ = "0.1.0"

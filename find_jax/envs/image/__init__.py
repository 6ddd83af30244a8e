"""The image environment: Stable Diffusion v1.5 (and the shipped shapes world) in Flax.

:mod:`~find_jax.envs.image.model` loads the frozen model, :mod:`~find_jax.envs.image.sampler` samples it
(:class:`ImageEnvironment`), :mod:`~find_jax.envs.image.decoders` turns latents into images, and
:mod:`~find_jax.envs.image.shapes` is the shipped ground-truth world.
"""

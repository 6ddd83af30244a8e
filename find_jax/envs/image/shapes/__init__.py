"""The shapes world: procedurally generated images with exact captions, and the small pixel-space
text-to-image model the package ships (trained by ``scripts/train_shapes.py``).

Modules: :mod:`~find_jax.envs.image.shapes.world` (generator + caption grammar),
:mod:`~find_jax.envs.image.shapes.tokenizer` (offline CLIP BPE tokenizer), :mod:`~find_jax.envs.image.shapes.model`
(configs, construction, saved layout), :mod:`~find_jax.envs.image.shapes.train` (training). The scorer is
``reward_models.shapes`` (reward ``shapes``).
"""

"""The shapes world: a procedural (image, caption) generator, an offline tokenizer, and the small
pixel-space text-to-image model the package ships (trained by ``scripts/train_shapes.py``).

Modules: :mod:`~find_jax.shapes.world` (generator + caption grammar), :mod:`~find_jax.shapes.tokenizer`
(offline CLIP BPE tokenizer), :mod:`~find_jax.shapes.model` (configs, construction, saved layout),
:mod:`~find_jax.shapes.train` (training). The scorer is ``reward_models.shapes`` (reward ``shapes``).
"""

from find_jax.shapes.world import COLOUR_NAMES, SHAPES, Caption, parse_caption, sample_batch, sample_scene

__all__ = ["COLOUR_NAMES", "SHAPES", "Caption", "parse_caption", "sample_batch", "sample_scene"]

"""The image environment: Stable Diffusion (or the shipped shapes world) sampled with DDIM in one jitted scan.

:func:`make_sampler` wires the model's Flax ``FlaxUNet2DConditionModel`` and decoder (VAE, or the pixel
fold) into :func:`find_jax.envs.scan.make_scan_sampler` (Eq. 3, CFG as one batched call, keyed eta noise) and
jits it, with the models' GroupNorms lowered by :mod:`find_jax.envs.image.fast_norm`. :class:`ImageEnvironment`
is the :class:`~find_jax.envs.base.Environment` of the loop: latents ``[P, N, C, h, w]`` -> images
``[P, N, H, W, 3]`` in ``[0, 1]``; the params are replicated once over the sampler's batch mesh.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from find_jax.envs.base import SAMPLER_DEFAULTS, SamplerSettings
from find_jax.envs.ddim import ddim_schedule
from find_jax.envs.environment import SamplerEnvironment
from find_jax.envs.image.fast_norm import fast_group_norm
from find_jax.envs.image.model import DiffusionModel
from find_jax.envs.scan import make_scan_sampler


def make_sampler(
    model: DiffusionModel,
    *,
    steps: int = 50,
    guidance: float = 7.5,
    eta: float = 0.0,
    mesh: Mesh | None = None,
    fast_norm: bool = True,
):
    """Builds the jitted sampler ``sample_fn(params, latents, cond, uncond, rngs) -> images``.

    Args of ``sample_fn``:
      params: ``model.params`` (passed, never closed over, so one compiled program serves any weights).
      latents: ``[B, C, h, w]`` initial noise ``x_T``, ``P`` prompts' ``N = B / P`` rows each, prompt-major.
      cond: ``[P, L, D]`` prompt embeddings; uncond: ``[P, L, D]`` unconditional / negative embeddings.
      rngs: ``[P, 2]`` PRNG keys of the prompts' eta noise (unused when ``eta == 0``).
    Returns images ``[B, H, W, 3]`` float32 in ``[0, 1]``. ``steps``, ``guidance`` and ``eta`` are baked in
    (one compile per setting and shape); changing prompts or latents never recompiles.

    ``mesh``: a 1-D ``"batch"`` mesh (:func:`find_jax.envs.devices.batch_mesh`); the UNet batch is sharded
    over it when its size divides that batch. Pass params replicated over the mesh (as :class:`ImageEnvironment`
    does) so they are not copied every call. ``fast_norm``: the GroupNorms run :mod:`find_jax.envs.image.fast_norm`'s
    lowering (same formula, faster on CPU); False runs Flax's own.
    """
    settings = SamplerSettings(steps=steps, guidance=guidance, eta=eta)  # validates the numbers
    sched = ddim_schedule(model.scheduler_config, settings.steps)
    unet, decoder = model.unet, model.decoder

    def denoise_fn(params, x, t, context):
        return unet.apply({"params": params["unet"]}, x, t, context).sample

    def decode_fn(params, x):
        return decoder.decode(params["decoder"], x)

    scan_fn = make_scan_sampler(denoise_fn, decode_fn, sched, guidance=guidance, eta=eta, dtype=model.dtype, mesh=mesh)

    def sample_fn(params, latents, cond, uncond, rngs):
        with fast_group_norm(fast_norm):  # at trace time: the jitted program holds the rewritten GroupNorms
            return scan_fn(params, latents, cond, uncond, rngs)

    return jax.jit(sample_fn)


class ImageEnvironment(SamplerEnvironment):
    """The image :class:`~find_jax.envs.base.Environment` of ``model`` with ``settings``.

    ``bind(prompts)`` encodes the prompts once and returns ``env_fn(latents [P, N, C, h, w], rngs [P, 2]) ->
    images [P, N, H, W, 3]``; one compiled sampler serves every group of the same shape. ``mesh``: where the
    sampler splits its batch; ``"auto"`` is :func:`~find_jax.envs.devices.batch_mesh` over the local devices.
    """

    kind = "image"

    def __init__(
        self,
        model: DiffusionModel,
        settings: SamplerSettings = SAMPLER_DEFAULTS,
        *,
        mesh: Mesh | None | str = "auto",
        fast_norm: bool = True,
    ):
        if settings.num_frames is not None:
            raise ValueError(
                f"num_frames={settings.num_frames} is for video models; {model.source} is a text-to-image model"
            )
        dh, dw = model.default_size
        self.height, self.width = settings.height or dh, settings.width or dw
        shape = model.latent_shape(self.height, self.width)  # validates the size

        def make_sample_fn(mesh):
            s = settings
            return make_sampler(model, steps=s.steps, guidance=s.guidance, eta=s.eta, mesh=mesh, fast_norm=fast_norm)

        super().__init__(model, settings, shape, make_sample_fn, mesh=mesh)


__all__ = ["ImageEnvironment", "make_sampler"]

"""The video environment: ModelScope text-to-video sampled with DDIM in one jitted scan.

:func:`make_video_sampler` wires the Flax UNet3D (:mod:`find_jax.envs.video.unet3d`) and the per-frame VAE
decoder into :func:`find_jax.envs.scan.make_scan_sampler` (Eq. 3, CFG as one batched call, keyed eta noise) and
jits it. As diffusers' ``TextToVideoSDPipeline``: the text condition is CLIP's last hidden state, the final
latent ``[B, C, F, h, w]`` is divided by the VAE's scaling factor and every frame decoded on its own, and the
video is ``clip(x / 2 + 0.5, 0, 1)`` (``decode_latents`` + ``VideoProcessor.postprocess_video``), here
``[B, F, H, W, 3]`` float32. :class:`VideoEnvironment` is the :class:`~find_jax.envs.base.Environment` of the
loop: latents ``[P, N, C, F, h, w]`` -> videos ``[P, N, F, H, W, 3]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from find_jax.envs.base import SAMPLER_DEFAULTS, SamplerSettings
from find_jax.envs.ddim import ddim_schedule
from find_jax.envs.environment import SamplerEnvironment
from find_jax.envs.image.fast_norm import fast_group_norm
from find_jax.envs.scan import make_scan_sampler
from find_jax.envs.video.model import VideoDiffusionModel

DECODE_CHUNK = 8  # frames per VAE call: bounds the decoder's activation memory whatever B * F is


def decode_frames(decoder: Any, params: Any, latents: jax.Array, *, chunk: int = DECODE_CHUNK) -> jax.Array:
    """``[B, C, F, h, w]`` latents -> ``[B, F, H, W, 3]`` in ``[0, 1]``, frame by frame with the image decoder.

    The ``B * F`` frames are decoded ``chunk`` at a time under ``lax.map`` (one compiled VAE call, memory of
    ``chunk`` frames); the last chunk is padded with zero latents and the padding dropped. Frames are
    independent in the VAE (per-sample GroupNorm), so the chunking changes nothing but the float rounding.
    """
    if chunk < 1:
        raise ValueError(f"decode chunk must be >= 1; got {chunk}")
    b, c, f, h, w = latents.shape
    frames = latents.transpose(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # frame-major per video, as diffusers
    size = min(chunk, b * f)
    pad = -(b * f) % size
    if pad:
        frames = jnp.concatenate([frames, jnp.zeros((pad, c, h, w), frames.dtype)])
    chunks = frames.reshape(-1, size, c, h, w)
    images = jax.lax.map(lambda x: decoder.decode(params, x), chunks)  # [n, size, H, W, 3]
    images = images.reshape(-1, *images.shape[2:])[: b * f]
    return images.reshape(b, f, *images.shape[1:])


def make_video_sampler(
    model: VideoDiffusionModel,
    *,
    steps: int = 50,
    guidance: float = 9.0,
    eta: float = 0.0,
    mesh: Mesh | None = None,
    decode_chunk: int = DECODE_CHUNK,
    fast_norm: bool = True,
):
    """Builds the jitted sampler ``sample_fn(params, latents, cond, uncond, rngs) -> videos``.

    Args of ``sample_fn``:
      params: ``model.params`` (arguments, never closed over).
      latents: ``[B, C, F, h, w]`` initial noise ``x_T``, ``P`` prompts' ``N = B / P`` rows each, prompt-major.
      cond / uncond: ``[P, L, D]`` prompt / negative-prompt embeddings (CLIP last hidden state).
      rngs: ``[P, 2]`` PRNG keys of the prompts' eta noise (unused when ``eta == 0``).
    Returns videos ``[B, F, H, W, 3]`` float32 in ``[0, 1]``. ``steps``, ``guidance`` (ModelScope's default 9),
    ``eta`` and ``decode_chunk`` (frames per VAE call) are baked in; prompts, latents and keys never recompile.
    ``mesh``: a 1-D ``"batch"`` mesh over which the UNet batch is split; ``fast_norm``: GroupNorms lowered by
    :mod:`find_jax.envs.image.fast_norm` (same formula; only Flax ``nn.GroupNorm`` calls are affected).
    """
    settings = SamplerSettings(steps=steps, guidance=guidance, eta=eta)  # validates the numbers
    if not isinstance(decode_chunk, int) or decode_chunk < 1:
        raise ValueError(f"decode_chunk must be a whole number >= 1; got {decode_chunk!r}")
    sched = ddim_schedule(model.scheduler_config, settings.steps)
    unet, decoder = model.unet, model.decoder

    def denoise_fn(params, x, t, context):
        return unet.apply({"params": params["unet"]}, x, t, context)

    def decode_fn(params, x):
        return decode_frames(decoder, params["decoder"], x, chunk=decode_chunk)

    scan_fn = make_scan_sampler(denoise_fn, decode_fn, sched, guidance=guidance, eta=eta, dtype=model.dtype, mesh=mesh)

    def sample_fn(params, latents, cond, uncond, rngs):
        with fast_group_norm(fast_norm):  # at trace time
            return scan_fn(params, latents, cond, uncond, rngs)

    return jax.jit(sample_fn)


class VideoEnvironment(SamplerEnvironment):
    """The video :class:`~find_jax.envs.base.Environment` of ``model`` with ``settings``.

    ``settings.num_frames`` (default: the model's, 16 for ModelScope), ``height`` and ``width`` (default: the
    model's size) fix ``latent_shape = (C, F, h, w)``. ``bind(prompts)`` encodes the prompts once and returns
    ``env_fn(latents [P, N, C, F, h, w], rngs [P, 2]) -> videos [P, N, F, H, W, 3]`` in ``[0, 1]``.
    ``mesh``: where the sampler splits its batch (``"auto"``: every local device).
    """

    kind = "video"

    def __init__(
        self,
        model: VideoDiffusionModel,
        settings: SamplerSettings = SAMPLER_DEFAULTS,
        *,
        mesh: Mesh | None | str = "auto",
        decode_chunk: int = DECODE_CHUNK,
        fast_norm: bool = True,
    ):
        if getattr(model, "kind", None) != "video":
            raise ValueError(f"{getattr(model, 'source', model)!r} is not a text-to-video model")
        frames = model.default_frames if settings.num_frames is None else settings.num_frames
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"num_frames must be a whole number >= 1; got {frames!r}")
        self.num_frames = frames
        dh, dw = model.default_size
        self.height, self.width = settings.height or dh, settings.width or dw
        shape = model.latent_shape(frames, self.height, self.width)

        def make_sample_fn(mesh):
            s = settings
            return make_video_sampler(
                model,
                steps=s.steps,
                guidance=s.guidance,
                eta=s.eta,
                mesh=mesh,
                decode_chunk=decode_chunk,
                fast_norm=fast_norm,
            )

        super().__init__(model, settings, shape, make_sample_fn, mesh=mesh)


__all__ = ["DECODE_CHUNK", "VideoEnvironment", "decode_frames", "make_video_sampler"]

"""``find-jax sample``: images from N(0, I) draws, given latents, or a learned FIND distribution."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import numpy as np

from find_jax.models import DiffusionModel
from find_jax.sampler import make_environment

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What ``find-jax sample`` was asked for (CLI flags map one to one)."""

    prompt: str
    negative_prompt: str = ""
    num_images: int = 1
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    eta: float = 0.0
    height: int | None = None
    width: int | None = None
    batch_size: int = 8  # images per sampler call (one compiled program per distinct batch shape)


def load_latents(path: str | Path, latent_shape: tuple[int, int, int], num_images: int | None) -> np.ndarray:
    """Reads ``[N, C, h, w]`` initial latents from ``.npy``, checking shape and values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latents file {path} does not exist")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read latents from {path}: {e}") from None
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(latent_shape):
        raise ValueError(
            f"latents in {path} have shape {x.shape}; this model and size need [N, {', '.join(map(str, latent_shape))}]"
        )
    if num_images is not None and x.shape[0] != num_images:
        raise ValueError(f"latents in {path} hold {x.shape[0]} draws but --num-images is {num_images}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"latents in {path} contain NaN or inf")
    return x.astype(np.float32)


def sample_images(
    model: DiffusionModel, request: SampleRequest, latents: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``request.num_images`` images; returns ``(images [N, H, W, 3], latents [N, C, h, w])``.

    Without ``latents``, ``x_T ~ N(0, I)`` from ``PRNGKey(seed)``. Batches of ``batch_size`` (the last one
    padded, so every call has the same shape and compiles once).
    """
    env = make_environment(
        model,
        request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps,
        guidance=request.guidance,
        eta=request.eta,
        height=request.height,
        width=request.width,
    )
    rng_latents, rng_eta = jax.random.split(jax.random.PRNGKey(request.seed))
    n = request.num_images if latents is None else latents.shape[0]
    if n < 1:
        raise ValueError(f"--num-images must be >= 1; got {n}")
    if latents is None:
        latents = np.asarray(jax.random.normal(rng_latents, (n, *env.latent_shape)), dtype=np.float32)
    bs = max(1, min(request.batch_size, n))
    chunks = []
    for i, start in enumerate(range(0, n, bs)):
        x = latents[start : start + bs]
        pad = bs - x.shape[0]
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        chunks.append(np.asarray(env(x, jax.random.fold_in(rng_eta, i)))[: bs - pad])
    return np.concatenate(chunks), latents


def write_images(out: str | Path, images: np.ndarray, latents: np.ndarray, meta: dict, *, overwrite: bool = False):
    """Writes ``images.npy``, ``latents.npy``, ``image_NNN.png`` and ``sample.json`` into ``out``."""
    from PIL import Image

    out = Path(out)
    if (out / "images.npy").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds images.npy; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "images.npy", images.astype(np.float32))
    np.save(out / "latents.npy", latents.astype(np.float32))
    for i, img in enumerate(images):
        Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out / f"image_{i:03d}.png")
    (out / "sample.json").write_text(json.dumps(meta, indent=2))

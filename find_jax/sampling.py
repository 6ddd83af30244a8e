"""``find-jax sample``: media from N(0, I) draws, given latents, or a learned FIND distribution.

Works on any environment (:mod:`find_jax.envs`): latents are ``[N, *latent_shape]`` (``(C, h, w)`` for images,
``(C, F, h, w)`` for video) and the media ``[N, H, W, 3]`` or ``[N, F, H, W, 3]``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from find_jax import envs
from find_jax.envs.base import SamplerSettings, bind_one

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """What ``find-jax sample`` was asked for (CLI flags map one to one)."""

    prompt: str
    settings: SamplerSettings = SamplerSettings()
    num_images: int = 1
    seed: int = 0
    batch_size: int = 8  # draws per sampler call (one compiled program per distinct batch shape)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("the prompt is empty: give a text prompt (--prompt TEXT)")
        if self.num_images < 1:
            raise ValueError(f"--num-images must be >= 1; got {self.num_images}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {self.batch_size}")

    def record(self) -> dict[str, Any]:
        """The request as the flat JSON record ``sample.json`` holds."""
        return {
            "prompt": self.prompt,
            **dataclasses.asdict(self.settings),
            "num_images": self.num_images,
            "seed": self.seed,
            "batch_size": self.batch_size,
        }


def read_latents_file(path: str | Path) -> np.ndarray:
    """The finite numbers in a ``.npy`` file; ``FileNotFoundError`` / ``ValueError`` with one clear line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latents file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError(f"latents file {path} is not a .npy file (write it with numpy.save)")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        reason = "it holds Python objects, not numbers" if "pickle" in str(e) else str(e)
        raise ValueError(f"cannot read latents from {path}: {reason}") from None
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"latents in {path} are {x.dtype}, not numbers")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"latents in {path} contain NaN or inf")
    return x


def check_latents(x: np.ndarray, latent_shape: tuple[int, ...], num_images: int | None, where: str) -> np.ndarray:
    """``x`` as float32 ``[N, *latent_shape]`` (one unbatched latent is accepted); ``ValueError`` on a wrong rank
    or shape, a count other than ``num_images``, or NaN/inf."""
    want = f"[N, {', '.join(map(str, latent_shape))}]"
    if x.ndim == len(latent_shape):
        x = x[None]
    if x.ndim != len(latent_shape) + 1 or tuple(x.shape[1:]) != tuple(latent_shape):
        kind = "video" if len(latent_shape) == 4 else "image"
        raise ValueError(f"latents in {where} have shape {list(x.shape)}; this {kind} model and size need {want}")
    if num_images is not None and x.shape[0] != num_images:
        raise ValueError(f"latents in {where} hold {x.shape[0]} draws but --num-images is {num_images}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"latents in {where} contain NaN or inf")
    return x.astype(np.float32)


def load_latents(path: str | Path, latent_shape: tuple[int, ...], num_images: int | None) -> np.ndarray:
    """Reads ``[N, *latent_shape]`` initial latents from ``.npy``, checking shape and values."""
    return check_latents(read_latents_file(path), latent_shape, num_images, str(path))


def sample_media(env: Any, request: SampleRequest, latents: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``request.num_images`` draws with ``env``; returns ``(media [N, ...], latents [N, *latent_shape])``.

    Without ``latents``, ``x_T ~ N(0, I)`` from ``PRNGKey(seed)``. Batches of ``batch_size`` (the last one padded,
    so every call has the same shape and compiles once); batch ``i``'s eta noise is ``fold_in(rng_eta, i)``.
    """
    env_fn = bind_one(env, request.prompt)
    rng_latents, rng_eta = jax.random.split(jax.random.PRNGKey(request.seed))
    n = request.num_images if latents is None else latents.shape[0]
    if latents is None:
        latents = np.asarray(jax.random.normal(rng_latents, (n, *env.latent_shape)), dtype=np.float32)
    bs = max(1, min(request.batch_size, n))
    chunks = []
    for i, start in enumerate(range(0, n, bs)):
        x = latents[start : start + bs]
        pad = bs - x.shape[0]
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        out = env_fn(x, jax.random.fold_in(rng_eta, i))
        chunks.append(np.asarray(jax.device_get(out))[: bs - pad])
    return np.concatenate(chunks), latents


def sample_from_run(
    workdir: str | Path,
    request: SampleRequest,
    *,
    model_spec: str | None = None,
    dtype: str | None = None,
    weights: str = "auto",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Media from the learned N(mu, sigma^2) of a FIND run: ``(media, latents, meta)``.

    ``request.settings`` are the run's sampler settings already merged with any flags (see the CLI); the model
    is the run's unless ``model_spec`` (the run's model at another path: other weights only warn, another latent
    shape is refused), in ``dtype`` (default the run's), read from the ``weights`` files.
    """
    from find_jax.rundir import load_state, read_run
    from find_jax.trainer import sample_from_state

    config, record = read_run(workdir)
    state = load_state(workdir)
    dtype = dtype or config.dtype
    model = envs.load_model(model_spec if model_spec is not None else config.model, dtype=dtype, weights=weights)
    if model.fingerprint != record.get("weights_hash", model.fingerprint):
        log.warning("the model's weights differ from the run's (%s): samples may not match", record["weights_hash"])
    env = envs.make_environment(model, request.settings)
    if tuple(env.latent_shape) != tuple(state.policy.mu.shape):
        raise ValueError(f"the run learned latents {tuple(state.policy.mu.shape)}; this size needs {env.latent_shape}")
    latents = np.asarray(sample_from_state(state, jax.random.PRNGKey(request.seed), request.num_images), np.float32)
    media, latents = sample_media(env, request, latents)
    meta = {"workdir": str(workdir), "step": int(state.step), "model": model.source, "dtype": dtype, **request.record()}
    return media, latents, meta


def check_out_dir(out: str | Path, *, overwrite: bool) -> Path:
    """``out`` as a Path; ``FileExistsError`` when it already holds samples and ``overwrite`` is off, or is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory")
    if ((out / "images.npy").exists() or (out / "videos.npy").exists()) and not overwrite:
        raise FileExistsError(f"{out} already holds samples; choose another --out or pass --overwrite")
    return out


def write_images(out: str | Path, images: np.ndarray, latents: np.ndarray, meta: dict, *, overwrite: bool = False):
    """Writes ``images.npy``, ``latents.npy``, ``image_NNN.png`` and ``sample.json`` into ``out``; videos
    ``[N, F, H, W, 3]`` write ``videos.npy``, ``video_NNN.gif`` (8 fps, ModelScope's) and ``video_NNN.png``
    (the frames side by side) instead."""
    from PIL import Image

    out = check_out_dir(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if images.ndim == 5:
        np.save(out / "videos.npy", images.astype(np.float32))
        np.save(out / "latents.npy", latents.astype(np.float32))
        for i, video in enumerate(np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)):
            frames = [Image.fromarray(f) for f in video]
            frames[0].save(out / f"video_{i:03d}.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
            Image.fromarray(np.concatenate(list(video), axis=1)).save(out / f"video_{i:03d}.png")
        (out / "sample.json").write_text(json.dumps(meta, indent=2))
        return
    np.save(out / "images.npy", images.astype(np.float32))
    np.save(out / "latents.npy", latents.astype(np.float32))
    for i, img in enumerate(images):
        Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out / f"image_{i:03d}.png")
    (out / "sample.json").write_text(json.dumps(meta, indent=2))


__all__ = [
    "SampleRequest",
    "check_latents",
    "check_out_dir",
    "load_latents",
    "read_latents_file",
    "sample_from_run",
    "sample_media",
    "write_images",
]

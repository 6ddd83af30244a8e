"""JAX <-> PyTorch bridge through DLPack, and torch-side image preprocessing.

The reward models that only exist in PyTorch (aesthetic, PickScore, ImageReward) receive the sampler's
images ``[B, H, W, 3]`` (a ``jax.Array``) without a copy: :func:`jax_to_torch` hands the same device buffer
to PyTorch through DLPack (CPU here, CUDA on a GPU machine), :func:`preprocess_images` resizes and
normalises on that device (by default as PIL does it on 8-bit images, bit for bit:
:mod:`reward_models.pil_resize`), and :func:`torch_to_jax` returns the scores the same way. Nothing goes
through PIL, numpy round trips or files. A tensor that would have to change device is refused with
:class:`DeviceMismatchError` rather than copied silently.

A ``jax.Array`` sharded over several devices (a batch run shards the prompt axis with a ``Mesh``) has no
single buffer to hand over: :func:`jax_to_torch` first gathers it onto one of the devices that already hold
it (:func:`gather_to_one_device`; one copy of the batch, none when every device holds all of it), then
shares that buffer as above.

``torch`` is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

# OpenAI CLIP's normalisation, used by CLIP ViT-L/14, LAION CLIP-H (PickScore's processor) and BLIP.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes as stored in Hugging Face ``preprocessor_config.json`` ("resample").
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class DeviceMismatchError(ValueError):
    """An array and the requested device differ; the bridge never copies across devices."""


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How a model's processor turns an image into ``pixel_values`` (Hugging Face CLIP conventions)."""

    size: int  # the shortest image edge is resized to this many pixels
    crop_size: int  # then a centred crop_size x crop_size square is cut out
    mean: tuple[float, float, float]  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, float, float]  # per-channel std divided by after subtracting the mean
    interpolation: str = "bicubic"  # "bicubic" or "bilinear" (PIL's filter of the original processor)
    antialias: bool = True  # float path only: PIL filters antialias when downscaling; True reproduces that
    # True: round to 8 bits and resize exactly as PIL does (reward_models.pil_resize), as the original
    # processors do on PIL images; False: a float kernel (within ~1 grey level of PIL)
    pil_uint8: bool = True


def clip_preprocess(size: int = 224) -> ImagePreprocess:
    """The OpenAI CLIP processor: bicubic shortest-edge resize to ``size``, centre crop, CLIP mean/std."""
    return ImagePreprocess(size=size, crop_size=size, mean=CLIP_MEAN, std=CLIP_STD)


def read_preprocess_config(directory: str | Path | None, default: ImagePreprocess) -> ImagePreprocess:
    """Reads ``preprocessor_config.json`` (a Hugging Face CLIP image processor) if ``directory`` holds one.

    Missing keys keep the values of ``default``; a directory without the file returns ``default``.
    """
    if directory is None:
        return default
    file = Path(directory) / "preprocessor_config.json"
    if not file.is_file():
        return default
    cfg = json.loads(file.read_text())

    def edge(value: Any, fallback: int) -> int:
        if value is None:
            return fallback
        if isinstance(value, dict):
            for key in ("shortest_edge", "height", "width"):
                if key in value:
                    return int(value[key])
            return fallback
        return int(value)

    size = edge(cfg.get("size"), default.size)
    crop = edge(cfg.get("crop_size"), size)
    resample = int(cfg.get("resample", 3))
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"{file}: unsupported resample filter {resample} (supported: {sorted(_PIL_RESAMPLE)})")
    return ImagePreprocess(
        size=size,
        crop_size=crop,
        mean=tuple(float(v) for v in cfg.get("image_mean", default.mean)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.get("image_std", default.std)),  # type: ignore[arg-type]
        interpolation=_PIL_RESAMPLE[resample],
        antialias=default.antialias,
        pil_uint8=default.pil_uint8,
    )


def torch_device_of(x: Any) -> torch.device:
    """The torch device that aliases ``x``'s buffer: ``cpu`` or ``cuda:N`` for a single-device jax.Array.

    A sharded array has no single buffer and is refused here: :func:`gather_to_one_device` it first
    (:func:`jax_to_torch` does so itself).
    """
    import torch

    if isinstance(x, np.ndarray):
        return torch.device("cpu")
    if not isinstance(x, jax.Array):
        raise TypeError(f"expected a jax.Array or numpy array, got {type(x).__name__}")
    devices = x.devices()
    if len(devices) != 1:
        raise ValueError(
            f"the array is sharded over {len(devices)} devices; DLPack needs one device: gather it first "
            "(e.g. jax.device_put(x, jax.devices()[0])) or score each shard separately"
        )
    return _torch_device_for(next(iter(devices)))


def _torch_device_for(dev: jax.Device) -> torch.device:
    """The torch device that shares memory with the JAX device ``dev`` through DLPack."""
    import torch

    if dev.platform == "cpu":
        return torch.device("cpu")
    if dev.platform in ("gpu", "cuda", "rocm"):
        return torch.device("cuda", dev.local_hardware_id)
    raise DeviceMismatchError(f"JAX device {dev} ({dev.platform}) has no PyTorch counterpart for DLPack")


def gather_to_one_device(x: jax.Array, device: Any = None) -> jax.Array:
    """``x`` on a single device, ready for DLPack; a single-device array is returned as it is (no copy).

    A sharded array is gathered onto one of the devices that already hold part of it: the one matching the
    torch ``device`` when given, else the holder with the lowest id. A fully replicated array costs no copy
    (that device's own copy is used); otherwise the whole array is copied there once (``jax.device_put``).

    Raises:
      DeviceMismatchError: none of ``x``'s devices is the torch ``device`` (the bridge never copies across
        devices: build the reward on one of the images' devices).
      ValueError: ``x`` spans several processes (this process cannot see every shard).
    """
    import torch

    if not isinstance(x, jax.Array):
        raise TypeError(f"expected a jax.Array, got {type(x).__name__}")
    if len(x.devices()) == 1:
        return x
    if not x.is_fully_addressable:
        raise ValueError(
            "the array is sharded over several processes; this process cannot gather it: gather it on the "
            "host first (jax.experimental.multihost_utils.process_allgather) or score each process's shards"
        )
    holders = sorted(x.devices(), key=lambda d: d.id)
    if device is None:
        target = holders[0]
    else:
        want = torch.device(device)
        matching = [d for d in holders if _same_device(_torch_device_for(d), want)]
        if not matching:
            raise DeviceMismatchError(
                f"the images are sharded over {', '.join(str(d) for d in holders)} but the reward model "
                f"expects {want}; the bridge never copies across devices: build the reward on "
                f"'{_torch_device_for(holders[0])}' or move the images with jax.device_put first"
            )
        target = matching[0]
    if x.is_fully_replicated:  # every device holds all of x: hand over the target's own buffer
        for shard in x.addressable_shards:
            if shard.device == target:
                return shard.data
    return jax.device_put(x, target)


def _same_device(a: torch.device, b: torch.device) -> bool:
    import torch

    if a.type != b.type:
        return False
    if a.type == "cuda":
        ia = torch.cuda.current_device() if a.index is None else a.index
        ib = torch.cuda.current_device() if b.index is None else b.index
        return ia == ib
    return True


def jax_to_torch(x: jax.Array | np.ndarray, device: Any = None) -> torch.Tensor:
    """A torch tensor sharing ``x``'s memory (DLPack; no copy).

    Args:
      x: a ``jax.Array`` (or a numpy array, shared through ``torch.from_numpy``), any shape. A single-device
        array is shared as it is; a sharded one is first gathered onto one of its devices
        (:func:`gather_to_one_device`, one copy) and that buffer is shared.
      device: the device the caller expects (e.g. the reward model's); ``None`` accepts ``x``'s own.

    Returns:
      A tensor of the same shape and dtype on ``x``'s device. JAX arrays are immutable: treat the tensor as
      read-only (an in-place op on it would change the JAX array behind JAX's back).

    Raises:
      DeviceMismatchError: ``device`` is not where ``x`` lives (the bridge never copies across devices:
        put the model on the images' device, or move the images with ``jax.device_put`` first).
    """
    import torch

    if isinstance(x, jax.Array) and len(x.devices()) > 1:
        x = gather_to_one_device(x, device)
    src = torch_device_of(x)
    if device is not None and not _same_device(torch.device(device), src):
        raise DeviceMismatchError(
            f"the images live on {src} but the reward model expects {torch.device(device)}; the bridge "
            "never copies across devices: build the reward with device="
            f"'{src}' or move the images with jax.device_put first"
        )
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return torch.from_dlpack(x)


def torch_to_jax(t: torch.Tensor) -> jax.Array:
    """A ``jax.Array`` sharing ``t``'s memory (DLPack; no copy for a contiguous, aligned tensor).

    JAX itself copies a buffer that is not suitably aligned (e.g. a view starting mid-allocation).

    ``t`` is detached first (DLPack refuses tensors that require grad); a non-contiguous tensor is made
    contiguous (one copy on its own device). A CUDA tensor needs a JAX with a GPU backend.
    """
    import torch

    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.device.type == "cuda":
        try:
            jax.devices("gpu")
        except RuntimeError as err:
            raise DeviceMismatchError(
                f"the tensor lives on {t.device} but JAX has no GPU backend (install jax[cuda12]), "
                "and the bridge never copies across devices"
            ) from err
    elif t.device.type != "cpu":
        raise DeviceMismatchError(f"tensors on {t.device} cannot be shared with JAX through DLPack")
    return jax.dlpack.from_dlpack(t)


def resize_shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output ``(h, w)`` of a shortest-edge resize, rounding the long edge down as Hugging Face does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def preprocess_images(
    images: torch.Tensor,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_size: int | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
    pil_uint8: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Resize + centre crop + normalise on the tensor's own device (the CLIP/BLIP processor on tensors).

    Args:
      images: ``[B, H, W, 3]`` float in [0, 1] (channels last, as the sampler makes them).
      size: the shortest edge is resized to ``size`` (long edge rounded down), like ``CLIPImageProcessor``
        and torchvision's ``Resize(size)``; skipped when already there.
      mean, std: per-channel normalisation, applied after the crop.
      crop_size: side of the centred square crop (default ``size``).
      interpolation: ``"bicubic"`` or ``"bilinear"``, the PIL filter of the original processor.
      antialias: ``True`` reproduces PIL's antialiased downscaling (torch's antialiased kernels use PIL's
        cubic a=-0.5). Versus PIL's float ("F") mode this agrees to ~1e-5; versus the 8-bit PIL path of the
        original processors it differs by about one grey level (PIL rounds to uint8 between its two passes).
      pil_uint8: round the images to 8 bits and resize them exactly as PIL does
        (:func:`reward_models.pil_resize.pil_resize`, bit for bit), as the original processors, which are
        given 8-bit PIL images; ``antialias`` is then moot (PIL always antialiases).
      dtype: dtype of the result (default float32); the arithmetic is done in float32.

    Returns:
      ``pixel_values: [B, 3, crop_size, crop_size]`` on ``images``' device.
    """
    import torch
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3]; got shape {tuple(images.shape)}")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    crop = size if crop_size is None else int(crop_size)
    h, w = images.shape[1:3]
    out_h, out_w = resize_shortest_edge_size(h, w, size)
    if pil_uint8:
        from reward_models.pil_resize import pil_resize, to_uint8

        x = to_uint8(images).permute(0, 3, 1, 2)  # [B, 3, H, W] uint8
        x = pil_resize(x, (out_h, out_w), interpolation).to(torch.float32) / 255.0
    else:
        x = images.permute(0, 3, 1, 2).to(torch.float32)  # [B, 3, H, W] (a view until the cast)
        if (out_h, out_w) != (h, w):
            x = F.interpolate(x, size=(out_h, out_w), mode=interpolation, antialias=antialias, align_corners=False)
            x = x.clamp(0.0, 1.0)  # the original processors resize 8-bit images, which clip overshoot
    if crop > out_h or crop > out_w:
        raise ValueError(f"crop {crop} is larger than the resized image {out_h}x{out_w}")
    top, left = (out_h - crop) // 2, (out_w - crop) // 2
    x = x[:, :, top : top + crop, left : left + crop]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.to(dtype or torch.float32).contiguous()


def preprocess_with(images: torch.Tensor, cfg: ImagePreprocess, dtype: Any = None) -> torch.Tensor:
    """:func:`preprocess_images` with the settings of an :class:`ImagePreprocess`."""
    return preprocess_images(
        images,
        size=cfg.size,
        mean=cfg.mean,
        std=cfg.std,
        crop_size=cfg.crop_size,
        interpolation=cfg.interpolation,
        antialias=cfg.antialias,
        pil_uint8=cfg.pil_uint8,
        dtype=dtype,
    )


def torch_device(device: Any = None) -> torch.device:
    """``device`` (default :func:`default_torch_device`) as a ``torch.device``, checked to exist here."""
    import torch

    dev = torch.device(device if device is not None else default_torch_device())
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceMismatchError(
            f"device {dev} requested but this torch has no CUDA (torch {torch.__version__}); use device='cpu' "
            "with CPU JAX arrays, or install a CUDA torch beside jax[cuda12]"
        )
    return dev


def default_torch_device() -> str:
    """Where torch reward models go by default: ``cuda`` when JAX and torch both see a GPU, else ``cpu``.

    The images come from JAX, so the model must sit on JAX's default device for the bridge to stay
    copy-free.
    """
    import torch

    platform = jax.default_backend()
    if platform in ("gpu", "cuda", "rocm") and torch.cuda.is_available():
        return f"cuda:{jax.devices()[0].local_hardware_id}"
    return "cpu"

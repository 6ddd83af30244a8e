"""torch ``UNet3DConditionModel`` state dict -> Flax params of ``find_jax.envs.video.unet3d``, strictly.

Every torch key must map onto a Flax parameter of the model built from the same config, with the right shape,
and every Flax parameter must be filled: otherwise ``UNet3DWeightsError`` names the unmapped, missing and
wrongly-shaped keys. diffusers' own converter handles 4-D kernels only; the temporal convolutions' Conv3d
kernels (`[O, I, 3, 1, 1]`) get their own rule here.

Key rule: ``a.0.b.weight`` -> ``("a_0", "b", leaf)`` (numeric parts fold into the previous name), with leaf and
layout chosen by the tensor's rank:
  4-D weight `[O, I, kh, kw]`       -> ``kernel`` `[kh, kw, I, O]` (Conv2d)
  5-D weight `[O, I, kf, kh, kw]`   -> ``kernel`` `[kf, kh, kw, I, O]` (Conv3d)
  2-D weight `[O, I]`               -> ``kernel`` `[I, O]` (Linear)
  1-D weight `[C]`                  -> ``scale`` (GroupNorm / LayerNorm)
  bias                              -> ``bias``
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from find_jax.envs.loading import ModelLoadError
from find_jax.envs.video.unet3d import UNet3DConfig, unet3d_param_shapes

_WEIGHT_RULES = {
    4: ("kernel", (2, 3, 1, 0)),
    5: ("kernel", (2, 3, 4, 1, 0)),
    2: ("kernel", (1, 0)),
    1: ("scale", (0,)),
}


class UNet3DWeightsError(ModelLoadError):
    """A torch state dict does not fit the UNet3D config: lists unmapped, missing and wrongly-shaped keys."""


def torch_key_to_flax(key: str, ndim: int) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """The Flax path and the axis permutation for torch ``key`` of rank ``ndim``; None when no rule applies."""
    parts: list[str] = []
    for p in key.split("."):
        if p.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{p}"
        else:
            parts.append(p)
    *module, leaf = parts
    if not module:
        return None
    if leaf == "bias" and ndim == 1:
        return (*module, "bias"), (0,)
    if leaf == "weight" and ndim in _WEIGHT_RULES:
        name, perm = _WEIGHT_RULES[ndim]
        return (*module, name), perm
    return None


_FOLDED = re.compile(
    r"^(down_blocks|up_blocks|resnets|temp_convs|attentions|temp_attentions|downsamplers|upsamplers"
    r"|transformer_blocks|to_out|net|conv[1-4])_(\d+)$"
)


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
    """The torch key a Flax parameter path comes from (the inverse of ``torch_key_to_flax``'s naming)."""
    *module, leaf = path
    names = [_FOLDED.sub(r"\1.\2", m) for m in module]
    return ".".join([*names, "bias" if leaf == "bias" else "weight"])


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): " + ", ".join(items[:limit]) + more


def plan_unet3d_conversion(
    shapes: Mapping[str, tuple[int, ...]], config: UNet3DConfig, *, where: str = "state dict"
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """torch key -> (Flax path, axis permutation) for a state dict given by its shapes only, checked strictly.

    Raises ``UNet3DWeightsError`` naming every unmapped torch key, every Flax parameter no key fills ("missing
    torch keys", named as torch keys) and every shape mismatch (torch key, its shape, the shape the config
    wants in torch layout). Needs no weights: a meta-device torch model's shapes can be checked as well.
    """
    want = {k: tuple(v.shape) for k, v in flatten_dict(unet3d_param_shapes(config)).items()}
    plan: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
    unmapped: list[str] = []
    wrong: list[str] = []
    seen: set[tuple[str, ...]] = set()  # paths some torch key maps to (a wrong shape is reported once, as wrong)
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        rule = torch_key_to_flax(key, len(shape))
        if rule is None or rule[0] not in want:
            unmapped.append(f"{key} {shape}")
            continue
        path, perm = rule
        seen.add(path)
        if tuple(shape[i] for i in perm) != want[path]:
            torch_shape = tuple(want[path][perm.index(i)] for i in range(len(perm)))
            wrong.append(f"{key}: got {shape}, config wants {torch_shape}")
            continue
        plan[key] = rule
    missing = sorted(flax_path_to_torch_key(k) for k in set(want) - seen)
    if unmapped or missing or wrong:
        parts = [f"UNet3D weights in {where} do not match the config"]
        if unmapped:
            parts.append(_listing("unmapped torch keys", unmapped))
        if missing:
            parts.append(_listing("missing torch keys", missing))
        if wrong:
            parts.append(_listing("wrong shapes", wrong))
        raise UNet3DWeightsError("; ".join(parts))
    return plan


def convert_unet3d_state_dict(
    state_dict: Mapping[str, Any], config: UNet3DConfig, *, dtype: Any = np.float32, where: str = "state dict"
) -> dict[str, Any]:
    """Flax params (nested dict of numpy arrays in ``dtype``) from a torch state dict of numpy-convertible arrays.

    Strict: see ``plan_unet3d_conversion`` for the ``UNet3DWeightsError`` raised on any mismatch.
    """
    plan = plan_unet3d_conversion({k: np.shape(v) for k, v in state_dict.items()}, config, where=where)
    have = {}
    for key, (path, perm) in plan.items():
        have[path] = np.ascontiguousarray(np.transpose(np.asarray(state_dict[key]), perm), dtype=dtype)
    return unflatten_dict(have)

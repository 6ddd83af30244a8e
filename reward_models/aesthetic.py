"""LAION aesthetic score (the "improved aesthetic predictor" v2): the paper's aesthetic metric.

``aesthetic(image) = MLP(e / ||e||)`` where ``e`` is the CLIP ViT-L/14 image embedding (projected, 768-d)
and the MLP is the improved aesthetic predictor's ``768 -> 1024 -> 128 -> 64 -> 16 -> 1`` stack of linear
layers (dropouts 0.2, 0.2, 0.1 between the first four, inactive at inference; no nonlinearities), trained
on SAC + LOGOS + AVA ratings: scores land roughly in 1..10 (higher is more aesthetic). Prompts are ignored.

Runs in PyTorch (transformers ``CLIPVisionModelWithProjection``) on the images' device: the ``jax.Array``
goes in through DLPack without a copy, the CLIP processor's bicubic resize (8-bit, PIL's resample bit for bit)
+ centre crop + normalisation run on that device (:func:`reward_models.bridge.preprocess_images`), and the
scores come back through DLPack.

Weights (never downloaded):
* the MLP: ``sac+logos+ava1-l14-linearMSE.pth`` from
  https://github.com/christophschuhmann/improved-aesthetic-predictor (TRL's DDPO example keeps the same MLP
  as ``aesthetic-model.pth`` in the hub repo ``trl-lib/ddpo-aesthetic-predictor``; either name is accepted);
* CLIP: ``openai/clip-vit-large-patch14`` (``config.json`` + weights; ``preprocessor_config.json`` optional).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward_models.bridge import (
    clip_preprocess,
    jax_to_torch,
    preprocess_with,
    read_preprocess_config,
    torch_device,
    torch_to_jax,
)
from reward_models.registry import RewardFn, register
from reward_models.weights import (
    MissingWeightsError,
    load_transformers_model,
    resolve_weights,
    transformers_files,
    weight_file,
)

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
MLP_HUB_ID = "trl-lib/ddpo-aesthetic-predictor"
MLP_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic-model.pth")
MLP_SOURCE = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
    f", or aesthetic-model.pth of https://huggingface.co/{MLP_HUB_ID}"
)
# Linear layers of the MLP in the checkpoint ("layers.i.weight" / "layers.i.bias"); dropouts sit between.
MLP_LINEAR_INDICES = (0, 2, 4, 6, 7)


def build_aesthetic_mlp(state_dict: dict[str, Any]) -> Any:
    """The improved-aesthetic-predictor MLP (``torch.nn.Sequential`` named ``layers``) with its weights.

    Layout: Linear(D, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1),
    Linear(64, 16), Linear(16, 1); sizes are read from ``state_dict`` (D = 768 for ViT-L/14). Loaded
    strictly: a file with other keys is refused.
    """
    import torch
    from torch import nn

    expected = {f"layers.{i}.{p}" for i in MLP_LINEAR_INDICES for p in ("weight", "bias")}
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if set(state) != expected:
        raise ValueError(
            f"not an improved-aesthetic-predictor MLP: expected keys {sorted(expected)}, got {sorted(state)[:12]}"
        )
    dims = [state["layers.0.weight"].shape[1]] + [state[f"layers.{i}.weight"].shape[0] for i in MLP_LINEAR_INDICES]

    class AestheticMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mods: list[nn.Module] = []
            for j, p in enumerate((0.2, 0.2, 0.1, None, None)):
                mods.append(nn.Linear(dims[j], dims[j + 1]))
                if p is not None:
                    mods.append(nn.Dropout(p))
            self.layers = nn.Sequential(*mods)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    mlp = AestheticMLP()
    mlp.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    return mlp.eval()


def _resolve_mlp(path: str | None, mlp_file: str | None) -> Path:
    """The MLP checkpoint file from ``path`` (a file, or a directory holding it) or the hub cache."""
    names = (mlp_file,) if mlp_file else MLP_FILES
    files = (weight_file(*names, source=MLP_SOURCE),)
    if path is not None and Path(path).expanduser().is_file():
        return Path(path).expanduser()
    directory = resolve_weights("aesthetic: MLP head", path=path, files=files, hub_id=MLP_HUB_ID)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise MissingWeightsError(f"aesthetic: none of {names} in {directory}")  # unreachable: resolved above


@register(
    "aesthetic",
    description="LAION improved aesthetic predictor: MLP on the normalised CLIP ViT-L/14 image embedding (~1-10)",
    weights=f"MLP {MLP_FILES[0]} (path=DIR or hub {MLP_HUB_ID}) + CLIP {DEFAULT_CLIP} (clip_path=DIR or hub cache)",
)
def make_aesthetic(
    path: str | None = None,
    *,
    clip_path: str | None = None,
    mlp_file: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
) -> RewardFn:
    """Builds the aesthetic reward.

    Args:
      path: the MLP checkpoint file, or a directory holding it (as ``sac+logos+ava1-l14-linearMSE.pth`` or
        ``aesthetic-model.pth``, or ``mlp_file``); if that directory also holds a CLIP model
        (``config.json``), CLIP is read from it too. Default: the hub cache of ``trl-lib/ddpo-aesthetic-predictor``.
      clip_path: CLIP ViT-L/14 directory or hub id (default: ``path`` if it holds a CLIP, else
        ``openai/clip-vit-large-patch14`` from the local hub cache).
      mlp_file: the MLP file name inside ``path``, if it has another name.
      device: torch device of the model; must be where the images live (default: JAX's default device).
      dtype: CLIP compute dtype (``float32``, ``float16`` or ``bfloat16``); the MLP runs in float32.
    """
    import torch
    from transformers import AutoConfig, CLIPVisionModelWithProjection

    mlp_path = _resolve_mlp(path, mlp_file)
    if clip_path is None and path is not None and (mlp_path.parent / "config.json").is_file():
        clip_path = str(mlp_path.parent)
    clip_dir = resolve_weights(
        "aesthetic: CLIP ViT-L/14",
        path=clip_path,
        files=transformers_files(DEFAULT_CLIP),
        hub_id=DEFAULT_CLIP,
        option="clip_path",
    )
    dev = torch_device(device)
    clip_cfg = AutoConfig.from_pretrained(clip_dir, local_files_only=True)
    vision_cfg = getattr(clip_cfg, "vision_config", clip_cfg)
    # A full CLIPModel checkpoint keeps projection_dim at the top level; the vision tower needs it too.
    vision_cfg.projection_dim = getattr(clip_cfg, "projection_dim", vision_cfg.projection_dim)
    clip = load_transformers_model(
        CLIPVisionModelWithProjection,
        clip_dir,
        what="aesthetic: CLIP",
        device=str(dev),
        dtype=dtype,
        config=vision_cfg,
    )
    mlp = build_aesthetic_mlp(torch.load(mlp_path, map_location="cpu", weights_only=True)).to(dev)
    cfg = read_preprocess_config(clip_dir, clip_preprocess(clip.config.image_size))
    model_dtype = clip.dtype

    @torch.inference_mode()
    def reward_fn(images: Any, prompts: Sequence[str]) -> Any:
        del prompts
        pixels = preprocess_with(jax_to_torch(images, dev), cfg, model_dtype)  # [B, 3, S, S]
        emb = clip(pixel_values=pixels).image_embeds.float()  # [B, D]
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return torch_to_jax(mlp(emb).squeeze(-1))  # [B]

    reward_fn.clip = clip  # type: ignore[attr-defined]
    reward_fn.mlp = mlp  # type: ignore[attr-defined]
    reward_fn.preprocess = cfg  # type: ignore[attr-defined]
    return reward_fn

"""Golden ViCLIP scores from the ORIGINAL code (VBench's copy of InternVid's ViCLIP), on tiny seeded weights.

Writes ``tests/fixtures/viclip_tiny/``:

* ``ViClip-InternVid-10M-FLT.pth``: ``{"model": state_dict}`` with the released checkpoint's key names, a
  tiny model (the layout of the released file, ``torch.load(f)["model"]``);
* ``bpe_simple_vocab_16e6.txt.gz``: a tiny BPE merges file in the format of OpenAI's;
* ``videos.npz``: the uint8 test videos ``[T, H, W, 3]`` and the original's preprocessed frames; for two
  noise-free ModelScope-sized videos (16 x 256 x 256, 16 x 256 x 320) also the original's 8 frames after
  ``Resize(224)`` + ``CenterCrop(224)`` at the released size (``frames224_uint8/NAME``, uint8, sampled frames
  0, 3 and 7);
* ``golden.json``: prompts, the original's token ids, frame indices and scores, and the ``ViCLIPConfig``
  overrides for our side;
* ``released_keys.json``: names and shapes of the full-size model's state dict (what the released
  ``ViClip-InternVid-10M-FLT.pth`` holds under ``"model"``: ViCLIP's constructor loads it strictly), with its
  parameter count.

The scores come from the original code path of VBench's ``overall_consistency``: ``get_frame_indices(8,
T, sample="middle")``, ``clip_transform(n_px)`` (torchvision ``Resize(n_px, BICUBIC, antialias=False)`` on
uint8 tensors, ``CenterCrop``, ``/255``, CLIP mean/std), ``ViCLIP.encode_vision(test=True)`` and
``encode_text`` (its own tokenizer), the cosine of the normalised features. ``ViCLIP(tokenizer,
pretrain=...)`` loads the checkpoint with its strict ``load_state_dict``.

Shims, none on the computing path: the ``vbench`` package is not installed (its setup refuses a CPU torch),
so ``vbench.utils`` is a stub holding ``CACHE_DIR`` (where the tokenizer reads the merges file) and
``clip_transform`` / ``get_frame_indices`` are taken verbatim from the wheel's ``vbench/utils.py`` (parsed,
not imported: that module imports decord); ``timm.models.layers.DropPath`` (identity at eval) and
``timm.models.registry.register_model`` are stubs; torchvision is imported without its package
``__init__`` (PyPI's CUDA build cannot register its C ops beside a CPU torch; the transforms used are pure
Python). The model sizes are patched (``clip_joint_l14`` / ``clip_text_l14`` build the same classes tiny).

Run it in its own virtualenv, never the project's::

    pip download --no-deps vbench==0.1.5 -d /tmp/vbench && cd /tmp/vbench && unzip -q vbench-0.1.5-*.whl
    pip download --no-deps torchvision==0.28.0 -d /tmp/tv
    python3 -m venv /work/viclipvenv
    /work/viclipvenv/bin/pip install torch==2.13.0 numpy einops ftfy regex "setuptools<81" pillow
    /work/viclipvenv/bin/pip install --no-deps /tmp/tv/torchvision-0.28.0-*.whl
    /work/viclipvenv/bin/python scripts/viclip_golden.py --vbench /tmp/vbench --out tests/fixtures/viclip_tiny

It uses one CPU thread and takes a few seconds.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib
import importlib.util
import json
import platform
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

SEED = 20240601
IMAGE_SIZE = 28  # the released model: 224
PATCH = 7  # 14
FRAMES = 8  # 8 (the temporal embedding's length)
VISION_WIDTH = 32  # 1024
VISION_LAYERS = 2  # 24
VISION_HEADS = 2  # 16
TEXT_WIDTH = 24  # 768
TEXT_LAYERS = 2  # 12
TEXT_HEADS = 2  # 12
EMBED_DIM = 16  # 768
CONTEXT = 32  # ViCLIP's max_txt_l (kept)

WORDS = (
    "a dog is running on the grass moon panda walking from left to right monkey playing guitar green "
    "red blue cat photo of video an in with and".split()
)


def write_merges(file: Path) -> None:
    """A tiny merges file laid out like ``bpe_simple_vocab_16e6.txt.gz``: a header line, then ``a b`` merges.

    The merges make each word of :data:`WORDS` one token (end-of-word ``</w>`` on its last symbol); other
    text falls back to byte symbols. No trailing newline (the real file's tail is cut by the tokenizer's
    ``[1:48895]`` slice; a tiny file must not end in an empty merge).
    """
    merges: list[str] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1]] + parts[2:]
    file.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(file, "wb") as f:
        f.write(("#version: 0.2 (tiny, scripts/viclip_golden.py)\n" + "\n".join(merges)).encode("utf-8"))


def load_vbench_functions(utils_py: Path, names: tuple[str, ...]) -> dict:
    """The named top-level functions of VBench's ``utils.py``, executed verbatim with their imports."""
    import random

    import torchvision.transforms as transforms
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    tree = ast.parse(utils_py.read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in wanted} == set(names), [n.name for n in wanted]
    namespace = {
        "np": np,
        "random": random,
        "transforms": transforms,
        "Compose": Compose,
        "Resize": Resize,
        "CenterCrop": CenterCrop,
        "ToTensor": ToTensor,
        "Normalize": Normalize,
        "BICUBIC": InterpolationMode.BICUBIC,
    }
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(utils_py), "exec"), namespace)  # noqa: S102
    return {n: namespace[n] for n in names}


def install_shims(vbench_root: Path, cache_dir: Path) -> None:
    """Stub modules for vbench (package + utils), timm's two names and a torchvision without __init__."""
    import torch

    pkg = types.ModuleType("vbench")
    pkg.__path__ = [str(vbench_root / "vbench")]
    sys.modules["vbench"] = pkg
    utils = types.ModuleType("vbench.utils")
    utils.CACHE_DIR = str(cache_dir)
    sys.modules["vbench.utils"] = utils

    class DropPath(torch.nn.Module):
        def __init__(self, p: float = 0.0) -> None:
            super().__init__()
            self.p = p

        def forward(self, x):
            assert not self.training, "the golden scores are computed in eval mode"
            return x

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath = DropPath
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
    sys.modules["timm.models.registry"] = registry

    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.submodule_search_locations, "install torchvision (--no-deps)"
    tv = types.ModuleType("torchvision")
    tv.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = tv


def randomize_(model, seed: int) -> None:
    """Seeded values for every parameter, scaled so that each one matters for the score."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if ".ln_" in name or name.startswith(("ln_", "vision_encoder.ln", "text_encoder.ln")):
                value = (1.0 + 0.2 * noise) if name.endswith("weight") else 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            elif "embedding" in name and "token" not in name:  # class/positional/temporal embeddings
                value = 0.5 * noise
            elif name == "temp":
                value = torch.tensor(0.0123)
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else p.shape[0]
                if name.endswith(("proj", "text_projection")):
                    fan_in = p.shape[0]  # used as x @ proj
                value = noise / np.sqrt(fan_in)
            p.copy_(value)


def make_videos(seed: int) -> dict[str, np.ndarray]:
    """uint8 ``[T, H, W, 3]`` videos: smooth moving patterns with noise, at and off the model size."""
    rng = np.random.default_rng(seed)

    def video(t: int, h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        out = np.zeros((t, h, w, 3))
        for c in range(3):
            fy, fx, ft, ph = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.6), rng.uniform(0.2, 1.0), rng.uniform(0, 6)
            for k in range(t):
                out[k, ..., c] = np.sin(fy * yy + fx * xx + ft * k + ph)
        out = 127.5 + 90 * out + rng.normal(0, 15, out.shape)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    return {
        "t8_28": video(8, 28, 28),  # model size, no resize
        "t8_28b": video(8, 28, 28),
        "t16_32": video(16, 32, 32),  # ModelScope-like: 16 frames, resized
        "t16_40x36": video(16, 40, 36),  # non-square: resize the short edge, centre crop
        "t5_30": video(5, 30, 30),  # fewer frames than 8: the last one repeats
    }


def modelscope_videos(seed: int) -> dict[str, np.ndarray]:
    """uint8 videos at ModelScope's output size (16 x 256 x 256) and a non-square one, for the released-size
    resize (256 -> 224, bicubic without antialiasing): smooth waves at a quarter of the size, each pixel
    repeated 4 x 4 (so the fixture compresses; the edges also exercise the clamping)."""
    rng = np.random.default_rng(seed)

    def video(t: int, h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0 : h // 4, 0 : w // 4] / 64.0
        k = np.arange(t)[:, None, None]
        chans = [
            0.5 + 0.45 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy + 0.05 * k + c))
            for c in range(3)
        ]
        small = np.clip(np.round(np.stack(chans, -1) * 255), 0, 255).astype(np.uint8)
        return small.repeat(4, axis=1).repeat(4, axis=2)

    return {"ms_16x256": video(16, 256, 256), "ms_16x256x320": video(16, 256, 320)}


FRAMES224_KEPT = (0, 3, 7)  # which of the 8 sampled frames the fixture keeps at 224 (size)


PROMPTS = (
    "A green dog is running on the grass.",
    "A dog is running on the moon.",
    "A panda is walking on the grass, from left to right.",
    "A monkey is playing guitar.",
    "",
    "a red cat " * 12,  # longer than 32 tokens: truncated, last token forced to end-of-text
    "Zebra & 3 cats, photo!",
)

CASES = (
    ("t8_28", 0),
    ("t8_28", 1),
    ("t8_28", 5),
    ("t8_28b", 2),
    ("t8_28b", 4),
    ("t16_32", 0),
    ("t16_32", 3),
    ("t16_40x36", 6),
    ("t5_30", 1),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vbench", type=Path, required=True, help="the unpacked vbench wheel (holds vbench/)")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/viclip_tiny"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="viclip_cache_"))  # vbench's CACHE_DIR for the tokenizer's default
    merges_file = out / "bpe_simple_vocab_16e6.txt.gz"
    write_merges(merges_file)
    (cache / "ViCLIP").mkdir(parents=True, exist_ok=True)
    (cache / "ViCLIP" / merges_file.name).write_bytes(merges_file.read_bytes())
    install_shims(args.vbench, cache)

    viclip_mod = importlib.import_module("vbench.third_party.ViCLIP.viclip")
    vision_mod = importlib.import_module("vbench.third_party.ViCLIP.viclip_vision")
    text_mod = importlib.import_module("vbench.third_party.ViCLIP.viclip_text")
    tok_mod = importlib.import_module("vbench.third_party.ViCLIP.simple_tokenizer")
    fns = load_vbench_functions(args.vbench / "vbench" / "utils.py", ("clip_transform", "get_frame_indices"))
    tokenizer = tok_mod.SimpleTokenizer(str(merges_file))

    # The released layout: the full-size model, randomly initialised (~1.7 GB for a moment; the original's
    # Transformer calls .item() on a linspace, so it cannot be built on the meta device).
    full = viclip_mod.ViCLIP(tokenizer=tokenizer, pretrain=None)
    keys = {k: list(v.shape) for k, v in full.state_dict().items()}
    n_params = sum(p.numel() for p in full.parameters())
    del full
    lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items())
    (out / "released_keys.json").write_text("{\n" + lines + "\n}\n")

    vocab_size = len(tokenizer.encoder)

    def tiny_vision(**kw):
        assert kw["input_resolution"] == 224 and kw["num_frames"] == 8, kw
        return vision_mod.VisionTransformer(
            input_resolution=IMAGE_SIZE,
            patch_size=PATCH,
            width=VISION_WIDTH,
            layers=VISION_LAYERS,
            heads=VISION_HEADS,
            output_dim=EMBED_DIM,
            kernel_size=kw["kernel_size"],
            num_frames=FRAMES,
            drop_path=kw["drop_path"],
            checkpoint_num=kw["checkpoint_num"],
            dropout=kw.get("dropout", 0.0),
        ).eval()

    def tiny_text(**kw):
        assert kw["context_length"] == CONTEXT and kw["embed_dim"] == 768, kw
        return text_mod.CLIP_TEXT(EMBED_DIM, CONTEXT, vocab_size, TEXT_WIDTH, TEXT_HEADS, TEXT_LAYERS, 0).eval()

    viclip_mod.clip_joint_l14 = tiny_vision
    viclip_mod.clip_text_l14 = tiny_text

    model = viclip_mod.ViCLIP(tokenizer=tokenizer, pretrain=None)
    randomize_(model, SEED)
    ckpt = out / "ViClip-InternVid-10M-FLT.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    loaded = viclip_mod.ViCLIP(tokenizer=tokenizer, pretrain=str(ckpt)).eval()  # strict load_state_dict
    saved = torch.load(ckpt, map_location="cpu")["model"]
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())

    videos = make_videos(SEED + 1)
    transform = fns["clip_transform"](IMAGE_SIZE)
    from torchvision.transforms import Compose

    frames, frames224, indices, cases = {}, {}, {}, []
    with torch.no_grad():
        for name, vid in videos.items():
            idx = fns["get_frame_indices"](8, len(vid), sample="middle")
            indices[name] = [int(i) for i in idx]
            x = torch.from_numpy(vid[idx]).permute(0, 3, 1, 2)  # (T, C, H, W) uint8, as decord + permute
            frames[name] = transform(x)  # [8, 3, S, S]
        resize_crop = Compose(fns["clip_transform"](224).transforms[:2])  # VBench's Resize + CenterCrop at 224
        for name, vid in modelscope_videos(SEED + 2).items():
            idx = fns["get_frame_indices"](8, len(vid), sample="middle")
            videos[name] = vid
            x224 = resize_crop(torch.from_numpy(vid[idx]).permute(0, 3, 1, 2))  # [8, 3, 224, 224] uint8
            frames224[name] = x224[list(FRAMES224_KEPT)]
        for name, p in CASES:
            prompt = PROMPTS[p]
            clip_feat = loaded.get_vid_features(frames[name].unsqueeze(0))
            text_feat = loaded.get_text_features(prompt, tokenizer, {})
            score = float((clip_feat @ text_feat.T)[0][0])
            ids = loaded.text_encoder.tokenize(prompt, context_length=CONTEXT)[0]
            cases.append({"video": name, "prompt": prompt, "input_ids": ids.tolist(), "score": score})

    np.savez_compressed(
        out / "videos.npz",
        **{f"video/{k}": v for k, v in videos.items()},
        **{f"frames/{k}": v.numpy() for k, v in frames.items()},
        **{f"frames224_uint8/{k}": v.numpy() for k, v in frames224.items()},
    )
    import torchvision

    golden = {
        "about": "scores of the original ViCLIP (VBench 0.1.5 third_party/ViCLIP) on seeded random tiny weights, "
        "VBench overall_consistency's path (scripts/viclip_golden.py)",
        "config": {
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "num_frames": FRAMES,
            "vision_width": VISION_WIDTH,
            "vision_layers": VISION_LAYERS,
            "vision_heads": VISION_HEADS,
            "text_width": TEXT_WIDTH,
            "text_layers": TEXT_LAYERS,
            "text_heads": TEXT_HEADS,
            "embed_dim": EMBED_DIM,
            "context_length": CONTEXT,
            "vocab_size": vocab_size,
        },
        "released_parameters": n_params,
        "frames224_kept": list(FRAMES224_KEPT),
        "frame_indices": indices,
        "seed": SEED,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": getattr(torchvision, "__version__", importlib.metadata.version("torchvision")),
            "vbench": "0.1.5",
            "numpy": np.__version__,
        },
        "cases": cases,
    }
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    scores = [c["score"] for c in cases]
    print(f"wrote {out}: {len(cases)} cases, scores in [{min(scores):.4f}, {max(scores):.4f}]", file=sys.stderr)
    print(f"released layout: {len(keys)} entries, {n_params / 1e6:.1f} M parameters", file=sys.stderr)


if __name__ == "__main__":
    import importlib.metadata

    main()

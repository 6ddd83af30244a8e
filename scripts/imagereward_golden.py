"""Golden ImageReward scores from the ORIGINAL implementation, on tiny seeded random weights.

Writes ``tests/fixtures/imagereward_tiny/``: ``ImageReward.pt`` (a state dict with the released checkpoint's
key names), ``med_config.json``, ``tokenizer/vocab.txt`` (a tiny uncased WordPiece vocabulary),
``images.npz`` (the uint8 test images and the original's preprocessed ``pixel_values``) and ``golden.json``
(prompts, the original's token ids, scores, and the :class:`ImageRewardConfig` overrides for our side).
It also writes ``released_keys.json``: the names and shapes of the released full-size ``ImageReward.pt``
(the original's ViT-L model built with ``released_med_config.json``; names and shapes only), so
the tests can check that every released entry maps onto our default-config model.
``tests/test_imagereward.py`` checks ``reward_models.imagereward`` against them to 1e-4.

The scores come from the original code: ``ImageReward.load`` builds and loads the model, ``model.score``
tokenizes, preprocesses (PIL + torchvision) and scores. Four things are patched, none of them on the
computing path: the builder of the ViT (the original hard-codes ViT-L at 224 px; here the same
``VisionTransformer`` class is built tiny), the size of its transform, the input width of its MLP (hard-coded
768), and where ``BertTokenizer.from_pretrained('bert-base-uncased')`` reads its files (a local directory,
since nothing is downloaded). A fifth patch, only if the installed transformers lacks them, re-exports
``apply_chunking_to_forward`` & co. from ``transformers.modeling_utils`` (removed in transformers ~4.56).

Run it in its own virtualenv, never the project's: ``image-reward`` pins timm 0.6.13 and needs PyPI's
torchvision, which breaks every transformers import beside the project's CPU torch. On x86_64 (see README)::

    python3 -m venv /work/irvenv
    /work/irvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/irvenv/bin/pip install transformers==4.46.3 diffusers==0.31.0 timm==0.6.13 "huggingface-hub<1" \
        accelerate datasets ftfy regex pillow numpy "setuptools<81"
    /work/irvenv/bin/pip install --no-build-isolation fairscale==0.4.13
    /work/irvenv/bin/pip install --no-deps image-reward==1.5 openai-clip
    /work/irvenv/bin/python scripts/imagereward_golden.py --out tests/fixtures/imagereward_tiny

(on aarch64 use ``torch==2.9.1 torchvision==0.24.1``). It uses one CPU thread and takes under a minute.

Or beside a CPU torch (how the current fixture was made; :func:`install_cpu_shims` says what it shims)::

    python3 -m venv /work/irvenv
    /work/irvenv/bin/pip install torch==2.13.0 numpy "setuptools<81" wheel pillow ftfy regex tqdm packaging pyyaml
    /work/irvenv/bin/pip install transformers==4.46.3 "huggingface-hub<1"
    /work/irvenv/bin/pip install --no-deps timm==0.6.13 torchvision==0.28.0 image-reward==1.5
    /work/irvenv/bin/pip install --no-deps --no-build-isolation fairscale==0.4.13

The images include 512x512 noise-free ones (smooth waves, a ramp) and one 512x640: the original resizes
them with PIL, so they check the end-to-end score through PIL's 8-bit resample; for those the fixture also
holds the original's ``_transform(224)`` output (``pixel_values/224/NAME``), the released model's input.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import platform
import sys
import types
from pathlib import Path

import numpy as np

# The tiny model. IMAGE_SIZE/PATCH/VISION_* replace ViT-L/16 at 224 px; the text side is med_config.json.
SEED = 20240527
IMAGE_SIZE = 48
PATCH = 16
VISION_WIDTH = 32
VISION_DEPTH = 2
VISION_HEADS = 2
TEXT_HIDDEN = 32

WORDS = (
    "a an the of on in with and to is at by photo picture painting image red green blue yellow black white "
    "circle square triangle squares circles background cat dog sitting mat sky sun tree house two three one "
    "small big bright dark cafe au lait style art detailed high quality very beautiful landscape over under"
).split()


def write_vocab(directory: Path) -> Path:
    """A tiny uncased WordPiece vocabulary laid out like bert-base-uncased's (``[PAD]`` = 0)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(".,!?'-")
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += [str(d) for d in range(10)]
    tokens += [w for w in WORDS if w not in tokens]
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    # What from_pretrained('bert-base-uncased') reads besides vocab.txt.
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}) + "\n")
    return vocab


def med_config(vocab_size: int) -> dict:
    """BLIP's med_config.json with tiny sizes (the released one: hidden 768, 12 layers, vocab 30524)."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TEXT_HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 768,
        "add_cross_attention": True,
    }


class _Stub(types.ModuleType):
    """A module whose every attribute is a do-nothing callable class (for imports off the scoring path)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import top`` / ``import top.sub`` yield :class:`_Stub` modules for the given top-level names."""

    def __init__(self, tops: set[str]) -> None:
        self.tops = tops

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.tops:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        module.check_min_version = lambda *a, **k: None


def install_cpu_shims() -> list[str]:
    """Lets the original run beside a CPU torch; returns what was shimmed (empty in a full install).

    * torchvision: PyPI's (CUDA) build cannot register its C ops with a CPU torch, so its package
      ``__init__`` fails; the transforms the original uses are pure Python and are imported without it.
    * diffusers, datasets, accelerate, clip, wandb: imported at package import by ``ReFL`` / ``CLIPScore``, never
      used by ``ImageReward.score``; stubbed when not installed.
    """
    shimmed = []
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - RuntimeError "operator torchvision::nms does not exist" and friends
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("torchvision")
        module = types.ModuleType("torchvision")
        module.__path__ = list(spec.submodule_search_locations)
        module.__spec__ = spec
        module.__version__ = importlib.metadata.version("torchvision")
        sys.modules["torchvision"] = module
        shimmed.append("torchvision (no package __init__)")
    missing = {
        m for m in ("diffusers", "datasets", "accelerate", "clip", "wandb") if importlib.util.find_spec(m) is None
    }
    if missing:
        sys.meta_path.insert(0, _StubFinder(missing))
        shimmed += sorted(missing)
    return shimmed


def import_original(tokenizer_dir: Path):
    """Imports the ``image-reward`` package and applies the patches described in the module docstring."""
    import transformers.modeling_utils as tmu

    if not hasattr(tmu, "apply_chunking_to_forward"):  # transformers >= ~4.56 moved them
        from transformers import pytorch_utils

        for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
            setattr(tmu, name, getattr(pytorch_utils, name))

    import ImageReward as RM  # noqa: N813 - the package's own name

    ir_mod = importlib.import_module("ImageReward.ImageReward")
    blip_mod = importlib.import_module("ImageReward.models.BLIP.blip")
    pretrain_mod = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
    vit_mod = importlib.import_module("ImageReward.models.BLIP.vit")

    def tiny_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        assert vit == "large" and image_size == 224, (vit, image_size)  # what ImageReward asks for
        encoder = vit_mod.VisionTransformer(
            img_size=IMAGE_SIZE,
            patch_size=PATCH,
            embed_dim=VISION_WIDTH,
            depth=VISION_DEPTH,
            num_heads=VISION_HEADS,
            use_grad_checkpointing=use_grad_checkpointing,
            ckpt_layer=ckpt_layer,
            drop_path_rate=0.1,  # as the original's 'large' branch (identity in eval mode)
        )
        return encoder, VISION_WIDTH

    def make_tiny() -> None:
        pretrain_mod.create_vit = tiny_vit
        original_transform = ir_mod._transform
        ir_mod._transform = lambda n_px: original_transform(IMAGE_SIZE)
        original_mlp = ir_mod.MLP
        ir_mod.MLP = lambda input_size: original_mlp(TEXT_HIDDEN)

    base = blip_mod.BertTokenizer

    class LocalBertTokenizer(base):
        @classmethod
        def from_pretrained(cls, name, *args, **kwargs):
            assert name == "bert-base-uncased", name
            return base.from_pretrained(str(tokenizer_dir), *args, **kwargs)

    blip_mod.BertTokenizer = LocalBertTokenizer
    return RM, ir_mod, make_tiny


# BLIP's med_config.json as released with ImageReward (THUDM/ImageReward): BERT-base, vocab 30522 + 2.
RELEASED_MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}


def released_keys(ir_mod, out: Path) -> dict[str, list[int]]:
    """Names and shapes of the released ImageReward.pt: the original's full-size model's state dict.

    Built (randomly initialised, about 1.8 GB for a moment) before the tiny patches, with the released
    med_config.json; only the names and shapes are kept.
    """

    med = out / "released_med_config.json"
    med.write_text(json.dumps(RELEASED_MED_CONFIG, indent=2) + "\n")
    model = ir_mod.ImageReward(med_config=str(med), device="cpu")  # ~1.8 GB, randomly initialised
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    del model
    return keys


def randomize_(model, seed: int) -> None:
    """Overwrites every weight with seeded noise of a scale that makes each one matter for the score.

    The original's init leaves biases at 0 and LayerNorms at (1, 0), so a mis-mapped bias or norm would go
    unnoticed; here every entry is random, and the head is scaled so the score varies by O(1).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name.lower():  # LayerNorm weight ~ 1, bias ~ 0
                value = (1.0 + 0.2 * noise) if name.endswith("weight") else 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            elif name.endswith(("cls_token", "pos_embed")):
                value = 0.5 * noise
            else:  # Linear / Conv / Embedding weights: unit-variance outputs
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else p.shape[0]
                value = noise / np.sqrt(fan_in)
            p.copy_(value)


def make_images(seed: int) -> dict[str, np.ndarray]:
    """uint8 ``[H, W, 3]`` images: four at the model size (no resize) and three that need resizing."""
    rng = np.random.default_rng(seed)

    def pattern(h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        img = np.zeros((h, w, 3))
        for c in range(3):
            for _ in range(3):
                fy, fx, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.3)
                img[..., c] += np.sin(fy * yy + fx * xx + ph)
        img = 127.5 + 40.0 * img + rng.normal(0, 12, size=img.shape)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)

    sizes = {"sq0": (48, 48), "sq1": (48, 48), "sq2": (48, 48), "sq3": (48, 48)}
    sizes.update({"down_64x80": (64, 80), "up_30x40": (30, 40), "odd_97x50": (97, 50)})
    images = {name: pattern(h, w) for name, (h, w) in sizes.items()}
    images.update(smooth_images(seed + 7))
    return images


def smooth_images(seed: int) -> dict[str, np.ndarray]:
    """512x512 (and one 512x640) noise-free images: ramps and slow waves, where a float resize misses PIL
    most often (a generated image at SD's size, resized by the original to the ViT's input)."""
    rng = np.random.default_rng(seed)

    def waves(h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w] / 512.0
        chans = [
            0.5
            + 0.3 * np.sin(2 * np.pi * (rng.uniform(0.3, 2) * xx + rng.uniform(0.3, 2) * yy + rng.uniform()))
            + 0.15 * np.cos(2 * np.pi * rng.uniform(1, 4) * yy)
            for _ in range(3)
        ]
        return np.clip(np.round(np.stack(chans, -1) * 255), 0, 255).astype(np.uint8)

    yy, xx = np.mgrid[0:512, 0:512]
    ramp = np.stack([xx / 511 * 255, yy / 511 * 255, (xx + yy) / 1022 * 255], -1)
    return {
        "smooth512_a": waves(512, 512),
        "smooth512_b": waves(512, 512),
        "ramp512": np.round(ramp).astype(np.uint8),
        "smooth512x640": waves(512, 640),
    }


PROMPTS = (
    "a red circle on a blue background",
    "Two green squares!",
    "a photo of a cat sitting on the mat",
    "",
    "a zebra in the sky",
    "Café AU LAIT, high quality",
    "a very detailed painting of a small white house under a bright yellow sun, with two big green trees and "
    "three black dogs sitting in the landscape, high quality, very beautiful art style",
    "[DEC] a dark sky",
)

# (image, prompt index): every image with some prompt, and some images/prompts repeated to vary one side.
CASES = (
    ("sq0", 0),
    ("sq0", 1),
    ("sq0", 6),
    ("sq1", 2),
    ("sq1", 3),
    ("sq2", 4),
    ("sq2", 0),
    ("sq3", 5),
    ("sq3", 7),
    ("down_64x80", 0),
    ("up_30x40", 2),
    ("odd_97x50", 6),
    ("smooth512_a", 0),
    ("smooth512_a", 2),
    ("smooth512_b", 5),
    ("ramp512", 1),
    ("smooth512x640", 4),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/imagereward_tiny"))
    args = parser.parse_args(argv)

    import PIL
    import torch
    import transformers
    from PIL import Image

    torch.set_num_threads(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    write_vocab(tok_dir)
    shimmed = install_cpu_shims()
    RM, ir_mod, make_tiny = import_original(tok_dir)
    transform_224 = ir_mod._transform(224)  # the released model's preprocessing, before the tiny patch
    # The released checkpoint's layout needs the real vocabulary size only in med_config (meta tensors).
    keys = released_keys(ir_mod, out)
    lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items())
    (out / "released_keys.json").write_text("{\n" + lines + "\n}\n")
    make_tiny()

    # Vocabulary size as BLIP's init_tokenizer leaves it ([DEC] and [ENC] added).
    tokenizer = importlib.import_module("ImageReward.models.BLIP.blip").init_tokenizer()
    med_file = out / "med_config.json"
    med_file.write_text(json.dumps(med_config(len(tokenizer)), indent=2) + "\n")

    # Seeded random weights, saved under the released checkpoint's key names (ImageReward.state_dict()).
    model = ir_mod.ImageReward(med_config=str(med_file), device="cpu")
    randomize_(model, SEED)
    ckpt = out / "ImageReward.pt"
    torch.save(model.state_dict(), ckpt)

    # The original loader and scorer.
    loaded = RM.load(str(ckpt), device="cpu", med_config=str(med_file))
    saved = torch.load(ckpt, map_location="cpu")
    current = loaded.state_dict()
    assert set(saved) == set(current), "the original's model and its checkpoint differ in keys"
    assert all(torch.equal(saved[k], current[k]) for k in saved), "the original did not load every weight"

    images = make_images(SEED + 1)
    pixel_values = {}
    cases = []
    with torch.no_grad():
        for name, img in images.items():
            pixel_values[name] = loaded.preprocess(Image.fromarray(img)).numpy()
            if name.startswith(("smooth512", "ramp512")):  # at the released size too (512 -> 224)
                pixel_values[f"224/{name}"] = transform_224(Image.fromarray(img)).numpy()
        for image_name, p in CASES:
            prompt = PROMPTS[p]
            ids = loaded.blip.tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
            value = loaded.score(prompt, Image.fromarray(images[image_name]))
            cases.append(
                {
                    "image": image_name,
                    "prompt": prompt,
                    "input_ids": list(ids["input_ids"]),
                    "attention_mask": list(ids["attention_mask"]),
                    "score": float(value),
                }
            )

    np.savez_compressed(
        out / "images.npz",
        **{f"image/{k}": v for k, v in images.items()},
        **{f"pixel_values/{k}": v for k, v in pixel_values.items()},
    )
    golden = {
        "about": "scores of the original image-reward package on seeded random tiny weights "
        "(scripts/imagereward_golden.py)",
        "config": {  # reward_models.imagereward.ImageRewardConfig overrides for this tiny model
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "vision_width": VISION_WIDTH,
            "vision_layers": VISION_DEPTH,
            "vision_heads": VISION_HEADS,
        },
        "seed": SEED,
        "shims": shimmed,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "image-reward": importlib.metadata.version("image-reward"),
            "timm": importlib.metadata.version("timm"),
            "pillow": PIL.__version__,
            "torchvision": importlib.metadata.version("torchvision"),
            "numpy": np.__version__,
        },
        "cases": cases,
    }
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    scores = [c["score"] for c in cases]
    print(f"wrote {out}: {len(cases)} cases, scores in [{min(scores):.4f}, {max(scores):.4f}]", file=sys.stderr)


if __name__ == "__main__":
    main()

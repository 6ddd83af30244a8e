"""Measures the JAX -> PyTorch bridge overhead against the reward call it feeds.

Prints, per batch size, the median time of
  * ``bridge``: ``jax_to_torch(images)`` + ``torch_to_jax(scores)`` (DLPack, no copy);
  * ``host copy``: the copying alternative (``np.asarray(images)`` -> ``torch.from_numpy``), for scale;
  * ``preprocess``: resize + crop + normalise on the device (``preprocess_images``);
  * ``reward``: the whole aesthetic reward call (bridge + preprocess + CLIP vision tower + MLP),
and the bridge's share of the reward call. The CLIP is randomly initialised from a config (no weights are
downloaded): ``--clip vit-l`` has the shapes of CLIP ViT-L/14 (what the aesthetic score really runs, so the
timing is the real one), ``--clip tiny`` is a 2-layer toy for a quick check.

  python scripts/benchmark_bridge.py --clip tiny --batch 1 4 --size 512
  python scripts/benchmark_bridge.py --clip vit-l --batch 1 --size 512 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def _time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _write_random_aesthetic(directory: Path, clip: str) -> None:
    """A random CLIP vision tower (+ projection) and a random aesthetic MLP, saved like real weights."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    if clip == "vit-l":  # CLIP ViT-L/14 shapes (openai/clip-vit-large-patch14)
        vision = dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        )
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=1, num_attention_heads=12)
        proj = 768
    else:
        vision = dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=30,
            patch_size=10,
        )
        text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
        proj = 16
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=proj)).save_pretrained(directory)
    sizes = [proj, 1024, 128, 64, 16, 1]
    state = {}
    for j, i in enumerate((0, 2, 4, 6, 7)):
        state[f"layers.{i}.weight"] = torch.randn(sizes[j + 1], sizes[j]) / sizes[j] ** 0.5
        state[f"layers.{i}.bias"] = torch.zeros(sizes[j + 1])
    torch.save(state, directory / "sac+logos+ava1-l14-linearMSE.pth")


def run(clip: str, batches: list[int], size: int, repeats: int, threads: int) -> None:
    import torch

    from reward_models import make_reward
    from reward_models.bridge import jax_to_torch, preprocess_with, torch_to_jax

    torch.set_num_threads(threads)
    print(
        f"jax {jax.__version__} on {jax.devices()[0]}, torch {torch.__version__} ({threads} thread(s)), "
        f"CLIP {clip}, images {size}x{size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        _write_random_aesthetic(Path(tmp), clip)
        reward = make_reward("aesthetic", path=tmp)
    cfg = reward.inner.preprocess
    header = f"{'batch':>5} {'bridge':>10} {'host copy':>10} {'preprocess':>11} {'reward':>10} {'bridge share':>13}"
    print(header)
    for b in batches:
        images = jax.random.uniform(jax.random.key(b), (b, size, size, 3), jnp.float32)
        images.block_until_ready()
        scores = torch.zeros(b)

        def round_trip(images=images, scores=scores):
            jax_to_torch(images)  # images in
            return torch_to_jax(scores)  # scores out

        bridge = _time(round_trip, 100 * repeats)
        host = _time(lambda images=images: torch.from_numpy(np.array(images)), 10 * repeats)
        t_images = jax_to_torch(images)
        prep = _time(lambda t=t_images: preprocess_with(t, cfg), repeats)
        call = _time(lambda images=images, b=b: np.asarray(reward(images, ["p"] * b)), repeats)
        print(
            f"{b:>5} {bridge * 1e3:>8.3f}ms {host * 1e3:>8.3f}ms {prep * 1e3:>9.2f}ms {call * 1e3:>8.1f}ms "
            f"{bridge / call:>12.4%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", choices=("tiny", "vit-l"), default="tiny", help="CLIP shapes (random weights)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes to time")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (SD1.5: 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    run(args.clip, args.batch, args.size, args.repeats, args.threads)


if __name__ == "__main__":
    main()

"""Cost of one FIND update (DRCM step + replay + policy epochs), jitted, in steady state.

Prints compile time and the median milliseconds per update for each preset at Stable Diffusion 1.5's
latent [4, 64, 64] and the shapes model's [14, 16, 16] (12 folded image channels + 2 coordinate planes),
to compare with one sampler call.

    python scripts/benchmark_update.py [--repeats 50] [--presets paper official]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from find_jax.config import get_preset
from find_jax.trainer import Batch, init_state, make_update_fn

SHAPES = {"sd15 [4,64,64]": (4, 64, 64), "shapes [14,16,16]": (14, 16, 16)}
EMBED_DIM = 768  # CLIP ViT-L/14 text embedding (official preset's text-conditioned DRCM)


def bench(preset: str, shape: tuple[int, int, int], repeats: int) -> dict[str, float]:
    """Compile seconds and per-update milliseconds (median, min) for ``preset`` at latent ``shape``."""
    cfg = get_preset(preset, prompt="benchmark")
    embed_dim = EMBED_DIM if cfg.drcm_text_conditioned else 0
    state = init_state(cfg, shape, embed_dim=embed_dim)
    n = cfg.samples_per_iter
    x = jax.random.normal(jax.random.PRNGKey(1), (n, *shape))
    batch = Batch(x=x, reward=jnp.full((n,), 0.5), valid=jnp.ones((n,), bool), prompt_embedding=jnp.ones((embed_dim,)))
    update = jax.jit(make_update_fn(cfg), donate_argnums=0)
    t0 = time.perf_counter()
    state, metrics = update(state, batch)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    for _ in range(3):  # warm-up
        state, metrics = update(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, metrics = update(state, batch)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - t) * 1e3)
    return {"compile_s": compile_s, "median_ms": statistics.median(times), "min_ms": min(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed updates per setting")
    parser.add_argument("--presets", nargs="+", default=["paper", "official"], help="config presets")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()})")
    print(f"{'preset':<10} {'latent':<18} {'compile s':>10} {'median ms':>10} {'min ms':>8}")
    for preset in args.presets:
        for name, shape in SHAPES.items():
            r = bench(preset, shape, args.repeats)
            print(f"{preset:<10} {name:<18} {r['compile_s']:>10.2f} {r['median_ms']:>10.2f} {r['min_ms']:>8.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: the UNet3D's spatial transformer with plain vs query-chunked attention (``query_chunk``), on CPU.

One ``Transformer2D`` layer (GroupNorm, self-attention over the `h * w` pixels of each frame, cross-attention on
the text, GEGLU) at ModelScope's top-level width (320 channels, 5 heads of 64, text 77 x 1024), random
weights; `--side` latents (64 = 512 px videos) and `--frames` frames in the batch. Each chunk setting runs in
its own process (first call incl. compile, median of `--repeats` calls, peak RSS = that process's VmHWM);
`--rounds` interleaves them. The plain call holds `[frames, 5, side^2, side^2]` float32 scores at once.

    python scripts/benchmark_attention.py --side 64 --frames 2 --chunks 0,1024,256 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_sampler import _peak_mb  # noqa: E402


def worker(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np

    from find_jax.envs.video.layers import Transformer2D

    layer = Transformer2D(heads=5, dim_head=64, groups=32, query_chunk=args.chunk or None)
    kx, kc, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (args.frames, args.side, args.side, 320))
    ctx = jax.random.normal(kc, (args.frames, 77, 1024))
    params = jax.jit(layer.init)(kp, x, ctx)  # jitted init: no eager op-by-op Flax init
    fn = jax.jit(layer.apply)
    t = time.perf_counter()
    out = fn(params, x, ctx).block_until_ready()
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        fn(params, x, ctx).block_until_ready()
        times.append(time.perf_counter() - t)
    return dict(
        chunk=args.chunk,
        first_s=first,
        steady_s=float(np.median(times)),
        peak_rss_mb=_peak_mb(),
        checksum=float(np.asarray(out, np.float64).sum()),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=64, help="latent side (h = w)")
    p.add_argument("--frames", type=int, default=2, help="frames in the batch (the layer's N)")
    p.add_argument("--chunks", default="0,1024,256", help="comma-separated query chunks (0 = plain)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    import numpy as np

    rows = []
    for rnd in range(args.rounds):
        for chunk in [int(c) for c in args.chunks.split(",")]:
            cmd = [sys.executable, __file__, "--worker", "--chunk", str(chunk), "--side", str(args.side)]
            cmd += ["--frames", str(args.frames), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                raise SystemExit(f"chunk {chunk} failed:\n{out.stderr[-3000:]}")
            rows.append(dict(json.loads(line[0][7:]), round=rnd))
            print(f"done: round {rnd + 1}/{args.rounds} chunk {chunk}", file=sys.stderr, flush=True)
    t = args.side**2
    print(
        f"\nTransformer2D, 320 ch, 5 heads x 64, {args.frames} frames of {args.side}x{args.side} ({t} queries), "
        f"float32, CPU; median over {args.rounds} round(s) of the median of {args.repeats} calls\n"
    )
    print("| query chunk | first call (s, incl. compile) | steady s/call | peak RSS (MB) | score tensor (MB) |")
    print("|---|---|---|---|---|")
    for chunk in dict.fromkeys(r["chunk"] for r in rows):
        same = [r for r in rows if r["chunk"] == chunk]
        scores = args.frames * 5 * (chunk or t) * t * 4 / 2**20
        first, steady = (float(np.median([r[k] for r in same])) for k in ("first_s", "steady_s"))
        peak = max(r["peak_rss_mb"] for r in same)
        print(f"| {chunk or 'off'} | {first:.2f} | {steady:.3f} | {peak:.0f} | {scores:.0f} |")
    sums = {r["chunk"]: r["checksum"] for r in rows}
    print(f"\noutput sums (same math, float rounding apart): {sums}")


if __name__ == "__main__":
    main()

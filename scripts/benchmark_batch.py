"""Prompts per hour: batched FIND (``--batch-prompts P``) vs one prompt at a time, and how it scales with P
and with the device count (fake CPU devices via ``XLA_FLAGS=--xla_force_host_platform_device_count``).

    nice -n 19 python scripts/benchmark_batch.py                      # tiny random SD model, brightness reward
    nice -n 19 python scripts/benchmark_batch.py --model shapes --reward shapes --steps 20

Every device count runs in its own interpreter (the flag must be set before jax is imported). Rows:

* ``one at a time``: ``find_jax.optimize.run`` per prompt, as ``find-jax optimize --prompt`` in a loop with
  the model loaded once (each prompt builds and compiles its own sampler, as the CLI does);
* ``batched P``: :func:`find_jax.optimize.run_batch` over the same prompts in groups of P (one compile).

``wall`` counts everything (compiles, checkpoints, final samples); ``steady`` uses the median group
iteration time (``time/group_iter_s``, compiles excluded): prompts/hour = 3600 * P / (iterations * t_iter).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    """Runs the measurements on this interpreter's devices; prints one JSON object per row."""
    import logging

    import jax
    import numpy as np
    import torch

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    from find_jax.envs import load_model
    from find_jax.metrics import read_metrics
    from find_jax.optimize import make_config, run, run_batch
    from find_jax.prompts import PromptItem

    devices = len(jax.devices())
    model = load_model(args.model)
    config = make_config(
        "tiny",
        model=args.model,
        reward=args.reward,
        iterations=args.iterations,
        steps=args.steps,
        checkpoint_every=args.iterations,
        num_final_samples=1,
    )
    prompts = [PromptItem(f"prompt number {i}: a red circle and a blue square") for i in range(args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        if devices == 1 and not args.skip_sequential:
            t0 = time.perf_counter()
            iters = []
            for i, item in enumerate(prompts):
                run(dataclasses.replace(config, prompt=item.text), Path(tmp) / f"seq{i}", model=model)
                iters += [m["time/iter_s"] for m in read_metrics(Path(tmp) / f"seq{i}" / "metrics.jsonl")[1:]]
            wall = time.perf_counter() - t0
            steady = 3600 / (args.iterations * float(np.median(iters)))
            print(json.dumps({"mode": "one at a time", "p": 1, "devices": devices, "wall": wall, "steady": steady}))
            sys.stdout.flush()
        for p in args.batch_sizes:
            if p % devices or p > args.prompts:
                continue
            workdir = Path(tmp) / f"batch{p}"
            t0 = time.perf_counter()
            result = run_batch(config, prompts, workdir, batch_prompts=p, model=model)
            wall = time.perf_counter() - t0
            assert not result.failed, result.failed
            group_iters = [
                m["time/group_iter_s"]
                for r in result.results[::p]
                for m in read_metrics(workdir / r.dir / "metrics.jsonl")[1:]
            ]
            steady = 3600 * p / (args.iterations * float(np.median(group_iters)))
            print(json.dumps({"mode": f"batched P={p}", "p": p, "devices": devices, "wall": wall, "steady": steady}))
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory or 'shapes' (default: a tiny random SD)")
    parser.add_argument("--reward", default="brightness", help="reward name (default brightness: weight-free)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the set (default 8)")
    parser.add_argument("--iterations", type=int, default=4, help="FIND iterations per prompt (default 4)")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps (default 2)")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="values of P (default 1,2,4,8)")
    parser.add_argument("--devices", default="1,2,4", help="fake CPU device counts (default 1,2,4)")
    parser.add_argument("--skip-sequential", action="store_true", help="leave out the one-at-a-time row")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_sizes = [int(x) for x in str(args.batch_sizes).split(",")]
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from find_jax.testing import make_tiny_sd

            model = str(make_tiny_sd(Path(tmp) / "tiny_sd", seed=0, formats=("flax",)))
        rows = []
        for d in [int(x) for x in args.devices.split(",")]:
            env = {
                **os.environ,
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}",
                "JAX_PLATFORMS": "cpu",
                "HF_HUB_OFFLINE": "1",
            }
            cmd = [sys.executable, __file__, "--child", "--model", model, "--reward", args.reward]
            cmd += ["--prompts", str(args.prompts), "--iterations", str(args.iterations), "--steps", str(args.steps)]
            cmd += ["--batch-sizes", ",".join(map(str, args.batch_sizes))]
            if args.skip_sequential:
                cmd.append("--skip-sequential")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"child with {d} devices failed:\n{proc.stderr[-3000:]}")
            for line in proc.stdout.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    rows.append(row)
                    print(f"# {row}", file=sys.stderr)
    print(
        f"{args.prompts} prompts, {args.iterations} iterations, {args.steps} DDIM steps, reward {args.reward}, "
        f"model {'tiny random SD' if args.model is None else args.model}; CPU, {os.cpu_count()} cores"
    )
    print()
    print("| mode | devices | wall s | prompts/h (wall) | prompts/h (steady) | speed-up (steady) |")
    print("|---|---:|---:|---:|---:|---:|")
    base = next((r["steady"] for r in rows if r["mode"] == "one at a time"), None)
    for r in rows:
        speedup = f"{r['steady'] / base:.2f}x" if base else "–"
        print(
            f"| {r['mode']} | {r['devices']} | {r['wall']:.1f} | {3600 * args.prompts / r['wall']:.0f} | "
            f"{r['steady']:.0f} | {speedup} |"
        )


if __name__ == "__main__":
    main()

"""Benchmark: the jitted JAX DDIM sampler vs diffusers' PyTorch StableDiffusionPipeline, same weights.

Each (framework, batch) runs in its own process so peak memory is its own. Prints a markdown table:
compile / first-call time, steady-state seconds per image, peak resident memory.

    python scripts/benchmark_sampler.py                      # tiny SD config, 8x8 latent, 50 steps, CFG 7.5
    python scripts/benchmark_sampler.py --config sd15 --dtype bfloat16 --jax-cpu-devices 1   # GPU machine

PyTorch runs once per ``--torch-threads`` entry (default ``1,2``: on this 2-core VM 2 threads were as fast as
1 at batch 1 and faster at batch 8, not the ~20x slower once assumed). JAX runs once per
``--jax-cpu-devices`` entry: 1 is the plain one-device sampler, 2 exposes two cores as two host devices and
splits the CFG batch over them (``find-jax --cpu-devices 2``). Each JAX row is compared with PyTorch's fastest
setting at that batch. ``--config sd15`` builds an SD1.5-sized model with random weights (timing only).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
)
SD15_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    sample_size=512,
)
SD15_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768
)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args: argparse.Namespace) -> dict:
    """Runs one (framework, batch) measurement in this process; returns a result row."""
    import numpy as np

    prompts = ["a photo of a red cat"] * args.batch
    devices, platform_name = 1, "cpu"
    if args.framework == "jax":
        import jax

        from find_jax.models import load_model
        from find_jax.sampler import configure_cpu_devices, make_environment

        configure_cpu_devices(args.cpu_devices)
        devices = jax.local_device_count()  # what the sampler really splits over
        platform_name = jax.devices()[0].platform
        model = load_model(args.model_dir, dtype=args.dtype)
        env = make_environment(model, prompts, steps=args.steps, guidance=args.guidance)
        x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, *env.latent_shape))
        rss_loaded = _peak_mb()
        t = time.perf_counter()
        env(x, jax.random.PRNGKey(0)).block_until_ready()
        first = time.perf_counter() - t
        times = []
        for i in range(args.repeats):
            t = time.perf_counter()
            np.asarray(env(x, jax.random.PRNGKey(i)))
            times.append(time.perf_counter() - t)
    else:
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        torch.set_num_threads(int(args.torch_threads))
        dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(
            args.model_dir,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            torch_dtype=dtype,
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = pipe.to(device)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        h = pipe.unet.config.sample_size * pipe.vae_scale_factor
        g = torch.Generator(device).manual_seed(0)
        lat = torch.randn((args.batch, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size), generator=g)
        lat = lat.to(device, dtype)
        rss_loaded = _peak_mb()

        def run():
            with torch.inference_mode():
                return pipe(
                    prompts,
                    latents=lat,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance,
                    eta=0.0,
                    output_type="np",
                    height=h,
                    width=h,
                ).images

        t = time.perf_counter()
        run()
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    steady = float(np.median(times))
    return dict(
        framework=args.framework,
        devices=devices,
        platform=platform_name,
        threads=int(args.torch_threads) if args.framework == "torch" else None,
        batch=args.batch,
        first_call_s=first,
        steady_s_per_call=steady,
        steady_s_per_image=steady / args.batch,
        peak_rss_mb=_peak_mb(),
        rss_after_load_mb=rss_loaded,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("tiny", "sd15"), default="tiny", help="model size (random weights)")
    p.add_argument("--model-dir", default=None, help="use this diffusers-format model instead of building one")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--frameworks", default="jax,torch", help="jax, torch or both")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (median reported)")
    p.add_argument(
        "--torch-threads", default="1,2", help="comma-separated PyTorch intra-op thread counts (its best is compared)"
    )
    p.add_argument(
        "--jax-cpu-devices",
        default="1,2",
        help="comma-separated JAX CPU device counts to run (find-jax --cpu-devices); ignored on a GPU",
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--cpu-devices", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    tmp = None
    if args.model_dir is None:
        from find_jax.testing import make_tiny_sd

        tmp = tempfile.TemporaryDirectory()
        kw = dict(unet=SD15_UNET, vae=SD15_VAE, text=SD15_TEXT) if args.config == "sd15" else {}
        args.model_dir = str(make_tiny_sd(Path(tmp.name) / "model", formats=("safetensors", "flax"), **kw))
    rows = []
    runs = []  # (framework, option flag, value)
    for fw in args.frameworks.split(","):
        if fw == "jax":
            runs += [("jax", "--cpu-devices", int(d)) for d in args.jax_cpu_devices.split(",")]
        else:
            runs += [("torch", "--torch-threads", int(t)) for t in str(args.torch_threads).split(",")]
    for fw, flag, value in runs:
        for b in [int(x) for x in args.batches.split(",")]:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--framework",
                fw,
                "--batch",
                str(b),
                "--model-dir",
                args.model_dir,
                "--steps",
                str(args.steps),
                "--guidance",
                str(args.guidance),
                "--dtype",
                args.dtype,
                "--repeats",
                str(args.repeats),
                flag,
                str(value),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not line:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"worker {fw} {flag} {value} batch {b} failed")
            rows.append(json.loads(line[0][len("RESULT ") :]))
            print(f"done: {fw} {flag} {value} batch {b}", file=sys.stderr, flush=True)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {_cpu_count()} cores; config {args.config}, "
        f"{args.steps} DDIM steps, CFG {args.guidance}, {args.dtype}\n"
    )
    print("| framework | setting | batch | first call (s, incl. compile) | steady s/image | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['framework']} | {_setting(r)} | {r['batch']} | {r['first_call_s']:.2f} | "
            f"{r['steady_s_per_image']:.4f} | {r['peak_rss_mb']:.0f} |"
        )
    for b in sorted({r["batch"] for r in rows}):
        torch_rows = [r for r in rows if r["framework"] == "torch" and r["batch"] == b]
        if not torch_rows:
            continue
        best = min(torch_rows, key=lambda r: r["steady_s_per_image"])
        for r in rows:
            if r["framework"] == "jax" and r["batch"] == b:
                ratio = best["steady_s_per_image"] / r["steady_s_per_image"]
                print(
                    f"\nbatch {b}: JAX ({_setting(r)}) is {ratio:.2f}x faster per image than PyTorch ({_setting(best)})"
                )
    print()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if tmp is not None:
        tmp.cleanup()


def _setting(row: dict) -> str:
    if row["framework"] == "jax":
        return f"{row['devices']} {row['platform'].upper()} device{'s' if row['devices'] > 1 else ''}"
    return f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()

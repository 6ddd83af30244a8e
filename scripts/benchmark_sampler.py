"""Benchmark: the jitted JAX DDIM sampler vs diffusers' PyTorch StableDiffusionPipeline, same weights.

``--kind video``: the video environment (Flax UNet3D) vs diffusers' ``TextToVideoSDPipeline`` + ``DDIMScheduler``
on the same ModelScope-layout weights, seconds per video (``--frames`` 16, CFG 9, batches 1 and 4):

    python scripts/benchmark_sampler.py --kind video                 # tiny UNet3D, 8x8 latents, 16 frames
    python scripts/benchmark_sampler.py --kind video --config modelscope --dtype bfloat16   # ms-1.7b-sized, GPU

Each (framework, batch) runs in its own process so peak memory is its own. Prints a markdown table:
compile / first-call time, steady-state seconds per image, peak resident memory.

    python scripts/benchmark_sampler.py                      # tiny SD config, 8x8 latent, 50 steps, CFG 7.5
    python scripts/benchmark_sampler.py --config sd15 --dtype bfloat16 --jax-cpu-devices 1   # GPU machine

PyTorch runs once per ``--torch-threads`` entry (default ``1,2``: on this 2-core VM 2 threads were as fast as
1 at batch 1 and faster at batch 8, not the ~20x slower once assumed). JAX runs once per
``--jax-cpu-devices`` entry: 1 is the plain one-device sampler, 2 exposes two cores as two host devices and
splits the CFG batch over them (``find-jax --cpu-devices 2``). Each JAX row is compared with PyTorch's fastest
setting at that batch (within each round). ``--rounds R`` runs all settings R times, interleaved, and reports
medians and each round's speed-up (the README's figures: ``--repeats 8 --rounds 5``). ``--config sd15`` builds
an SD1.5-sized model with random weights (timing only).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
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


# ali-vilab/text-to-video-ms-1.7b: its UNet3D is UNet3DConfig's defaults (diffusers' own) at 32x32 latents,
# its VAE SD's at 256 px, its text encoder OpenCLIP ViT-H's text tower (width 1024, 23 layers).
MODELSCOPE_VAE = dict(SD15_VAE, sample_size=256)
MODELSCOPE_TEXT = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=23,
    projection_dim=512,
    hidden_act="gelu",
)


def make_video_model(folder: Path, config: str) -> None:
    """A random ModelScope-layout model in ``folder``: the tiny one, or (``modelscope``) the tiny one with its
    UNet3D, VAE and text encoder replaced by ms-1.7b-sized ones drawn by torch's initialisers (no Flax init:
    the loaders convert the torch weights)."""
    from find_jax.envs.video.testing import make_tiny_video_model, make_tiny_video_unet

    make_tiny_video_model(folder)
    if config != "modelscope":
        return
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from find_jax.envs.video.unet3d import UNet3DConfig

    unet = {k: v for k, v in UNet3DConfig().to_dict().items() if v is not None}
    text_cfg = CLIPTextConfig.from_pretrained(str(folder / "text_encoder"))  # the tiny tokenizer's vocabulary
    for k, v in MODELSCOPE_TEXT.items():
        setattr(text_cfg, k, v)
    for part in ("unet", "vae", "text_encoder"):
        shutil.rmtree(folder / part)
    make_tiny_video_unet(folder, noise=0.0, **dict(unet, sample_size=32))  # noise 0: torch's init as it is
    torch.manual_seed(1)
    AutoencoderKL(**MODELSCOPE_VAE).save_pretrained(folder / "vae", safe_serialization=True)
    CLIPTextModel(text_cfg).save_pretrained(folder / "text_encoder", safe_serialization=True)


MODEL_MARKER = "benchmark_model.json"  # written into a --model-out folder: which --config it was built for


def _peak_mb() -> float:
    """Peak resident memory of this process in MB.

    Linux: ``VmHWM``, the high-water mark of this program's own memory. ``ru_maxrss`` is not used there: it
    keeps the parent's peak across fork + exec, so every worker reported at least the parent's peak (the
    parent builds the model: 645 MB for the tiny config, 14 GB for SD1.5).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args: argparse.Namespace) -> dict:
    """Runs one (framework, batch) measurement in this process; returns a result row."""
    import numpy as np

    video = args.kind == "video"
    prompts = ["a video of a red cat running" if video else "a photo of a red cat"] * args.batch
    devices, platform_name, device_name, gpu_peak = 1, "cpu", platform.processor() or platform.machine(), None
    if args.framework == "jax":
        import jax

        from find_jax.envs import SamplerSettings, load_model, make_environment
        from find_jax.envs.base import bind_one
        from find_jax.envs.devices import configure_cpu_devices

        configure_cpu_devices(args.cpu_devices)
        devices = jax.local_device_count()  # what the sampler really splits over
        platform_name = jax.devices()[0].platform
        if platform_name != "cpu":
            device_name = jax.devices()[0].device_kind
        model = load_model(args.model_dir, dtype=args.dtype)
        settings = SamplerSettings(steps=args.steps, guidance=args.guidance, num_frames=args.frames if video else None)
        if video and args.query_chunk:
            import dataclasses

            model = dataclasses.replace(model, unet=model.unet.clone(query_chunk=args.query_chunk))
        environment = make_environment(model, settings, fast_norm=args.fast_norm == "on")
        env = bind_one(environment, prompts[0])  # one prompt, the batch as its draws: [B] rows as before
        x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, *environment.latent_shape))
        rss_loaded = _peak_mb()
        t = time.perf_counter()
        env(x, jax.random.PRNGKey(0)).block_until_ready()
        first = time.perf_counter() - t
        times = []
        for i in range(args.repeats):
            t = time.perf_counter()
            np.asarray(env(x, jax.random.PRNGKey(i)))
            times.append(time.perf_counter() - t)
        stats = jax.devices()[0].memory_stats() if platform_name != "cpu" else None
        gpu_peak = stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None
    else:
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline, TextToVideoSDPipeline

        torch.set_num_threads(int(args.torch_threads))
        dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        if video:
            pipe = TextToVideoSDPipeline.from_pretrained(args.model_dir, torch_dtype=dtype)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                args.model_dir,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                torch_dtype=dtype,
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            platform_name, device_name = "gpu", torch.cuda.get_device_name()
        pipe = pipe.to(device)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        h = pipe.unet.config.sample_size * pipe.vae_scale_factor
        g = torch.Generator(device).manual_seed(0)
        side = pipe.unet.config.sample_size
        frames = (args.frames,) if video else ()  # video latents [B, C, F, h, w]
        lat = torch.randn((args.batch, 4, *frames, side, side), generator=g).to(device, dtype)
        extra = dict(num_frames=args.frames) if video else {}
        rss_loaded = _peak_mb()

        def run():
            with torch.inference_mode():
                out = pipe(
                    prompts,
                    latents=lat,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance,
                    eta=0.0,
                    output_type="np",
                    height=h,
                    width=h,
                    **extra,
                )
                return out.frames if video else out.images

        t = time.perf_counter()
        run()
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        if device == "cuda":
            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    steady = float(np.median(times))
    unit = "video" if video else "image"
    return dict(
        framework=args.framework,
        kind=args.kind,
        devices=devices,
        platform=platform_name,
        threads=int(args.torch_threads) if args.framework == "torch" else None,
        batch=args.batch,
        first_call_s=first,
        steady_s_per_call=steady,
        **{f"steady_s_per_{unit}": steady / args.batch},
        frames=args.frames if video else None,
        query_chunk=(args.query_chunk or None) if video and args.framework == "jax" else None,
        peak_rss_mb=_peak_mb(),
        peak_gpu_mb=gpu_peak,  # JAX: the device's peak_bytes_in_use (its preallocated pool aside); torch: max allocated
        device_name=device_name,
        fast_norm=args.fast_norm if args.framework == "jax" else None,
        rss_after_load_mb=rss_loaded,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("image", "video"), default="image", help="SD sampler or the video one")
    p.add_argument(
        "--config",
        choices=("tiny", "sd15", "modelscope"),
        default="tiny",
        help="model size (random weights): tiny or sd15 (image), tiny or modelscope (video)",
    )
    p.add_argument("--model-dir", default=None, help="use this diffusers-format model instead of building one")
    p.add_argument(
        "--model-out",
        default=None,
        help="build the random --config model in this folder and keep it (reused when it already holds one)",
    )
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8; video 1,4)")
    p.add_argument("--frameworks", default="jax,torch", help="jax, torch or both")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default 7.5; video 9)")
    p.add_argument("--frames", type=int, default=16, help="video: frames per video")
    p.add_argument(
        "--query-chunk",
        type=int,
        default=0,
        help="video, JAX: spatial attention queries per chunk (UNet3DConditionModel.query_chunk; 0 = all at once)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the first (median reported)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every setting this many times, interleaved; the table shows medians, the speed-ups each round's",
    )
    p.add_argument(
        "--torch-threads", default="1,2", help="comma-separated PyTorch intra-op thread counts (its best is compared)"
    )
    p.add_argument(
        "--jax-cpu-devices",
        default="1,2",
        help="comma-separated JAX CPU device counts to run (find-jax --cpu-devices); ignored on a GPU",
    )
    p.add_argument(
        "--fast-norm",
        choices=("on", "off"),
        default="on",
        help="JAX: the sampler's GroupNorm lowering (find_jax/fast_norm.py; off = Flax's own, for comparison)",
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--cpu-devices", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        p.error(f"--rounds and --repeats must be >= 1; got {args.rounds} and {args.repeats}")
    if args.config != "tiny" and args.config != {"image": "sd15", "video": "modelscope"}[args.kind]:
        p.error(f"--config {args.config} is no {args.kind} model (image: tiny, sd15; video: tiny, modelscope)")
    if args.frames < 1 or args.query_chunk < 0:
        p.error(f"--frames must be >= 1 and --query-chunk >= 0; got {args.frames} and {args.query_chunk}")
    video = args.kind == "video"
    args.batches = args.batches or ("1,4" if video else "1,8")
    args.guidance = args.guidance if args.guidance is not None else (9.0 if video else 7.5)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    if args.model_dir is not None and args.model_out is not None:
        p.error("give --model-dir (an existing model) or --model-out (build one and keep it), not both")
    tmp = None
    if args.model_dir is None:
        from find_jax.testing import make_tiny_sd

        if args.model_out is None:
            tmp = tempfile.TemporaryDirectory()
        folder = Path(args.model_out) if args.model_out else Path(tmp.name) / "model"
        marker = folder / MODEL_MARKER
        label = args.config if not video else f"{args.config} video"  # what the marker records
        if marker.is_file():
            built = json.loads(marker.read_text()).get("config")
            if built != label:
                p.error(f"--model-out {folder} holds the {built!r} model, not {label!r}; give another folder")
            print(f"reusing the model in {folder}", file=sys.stderr)
        elif folder.exists() and any(folder.iterdir()):
            p.error(
                f"--model-out {folder} exists and holds no model built by this script; give an empty folder "
                "(or --model-dir to time an existing model)"
            )
        else:
            kw = dict(unet=SD15_UNET, vae=SD15_VAE, text=SD15_TEXT) if args.config == "sd15" else {}
            t = time.perf_counter()
            partial = folder.with_name(folder.name + ".partial")  # renamed when complete: no half model is reused
            shutil.rmtree(partial, ignore_errors=True)
            if video:
                make_video_model(partial, args.config)
            else:
                make_tiny_sd(partial, formats=("safetensors", "flax"), **kw)
            (partial / MODEL_MARKER).write_text(json.dumps({"config": label}))
            if folder.exists():
                folder.rmdir()
            partial.rename(folder)
            print(f"built the {label} model in {folder} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        args.model_dir = str(folder)
    runs = []  # (framework, option flag, value)
    for fw in args.frameworks.split(","):
        if fw == "jax":
            runs += [("jax", "--cpu-devices", int(d)) for d in args.jax_cpu_devices.split(",")]
        else:
            runs += [("torch", "--torch-threads", int(t)) for t in str(args.torch_threads).split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    rows = []
    for rnd in range(args.rounds):  # rounds interleave the settings, so slow drift of the VM hits all of them
        for fw, flag, value in runs:
            for b in batches:
                row = _run_worker(args, fw, flag, value, b)
                rows.append(dict(row, round=rnd))
                print(f"done: round {rnd + 1}/{args.rounds} {fw} {flag} {value} batch {b}", file=sys.stderr, flush=True)
    _print_report(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if tmp is not None:
        tmp.cleanup()


def _run_worker(args: argparse.Namespace, fw: str, flag: str, value: int, batch: int) -> dict:
    """One measurement in a fresh process (its own compile, its own peak memory)."""
    cmd = [sys.executable, __file__, "--worker", "--framework", fw, "--batch", str(batch)]
    cmd += ["--model-dir", args.model_dir, "--steps", str(args.steps), "--guidance", str(args.guidance)]
    cmd += ["--dtype", args.dtype, "--repeats", str(args.repeats), "--fast-norm", args.fast_norm, flag, str(value)]
    cmd += ["--kind", args.kind, "--frames", str(args.frames), "--query-chunk", str(args.query_chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        print(out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"worker {fw} {flag} {value} batch {batch} failed")
    return json.loads(line[0][len("RESULT ") :])


def _print_report(rows: list[dict], args: argparse.Namespace) -> None:
    """The table (medians over rounds) and each JAX setting's speed-up over PyTorch's fastest setting.

    The speed-up is taken within each round (PyTorch's fastest setting of that round at that batch), so a
    VM that slows down between rounds slows both sides of a ratio; with several rounds the median and the
    per-round values are printed.
    """
    import numpy as np

    rounds = sorted({r["round"] for r in rows})
    unit = getattr(args, "kind", "image")  # "image" or "video": rows hold steady_s_per_<unit>
    key = f"steady_s_per_{unit}"
    video = unit == "video"
    accelerators = sorted({r["device_name"] for r in rows if r.get("platform", "cpu") != "cpu"})
    gpu = bool(accelerators)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {_cpu_count()} cores"
        + (f", {' / '.join(accelerators)}" if gpu else "")
        + f"; config {args.config}{' video, ' + str(args.frames) + ' frames' if video else ''}, "
        f"{args.steps} DDIM steps, CFG {args.guidance}, {args.dtype}; {len(rounds)} round(s), "
        f"median of {args.repeats} timed calls per row"
        + ("; JAX with Flax's own GroupNorm (--fast-norm off)" if getattr(args, "fast_norm", "on") == "off" else "")
        + (f"; JAX attention in chunks of {args.query_chunk} queries" if video and args.query_chunk else "")
        + (" (table: medians over rounds)" if len(rounds) > 1 else "")
        + "\n"
    )
    gpu_col = " peak GPU memory (MB) |" if gpu else ""
    print(f"| framework | setting | batch | first call (s, incl. compile) | steady s/{unit} | peak RSS (MB) |{gpu_col}")
    print("|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    keys = list(dict.fromkeys((r["framework"], _setting(r), r["batch"]) for r in rows))
    for fw, setting, b in keys:
        same = [r for r in rows if (r["framework"], _setting(r), r["batch"]) == (fw, setting, b)]
        first = float(np.median([r["first_call_s"] for r in same]))
        steady = float(np.median([r[key] for r in same]))
        peak = max(r["peak_rss_mb"] for r in same)
        line = f"| {fw} | {setting} | {b} | {first:.2f} | {steady:.4f} | {peak:.0f} |"
        if gpu:
            gpu_peaks = [r["peak_gpu_mb"] for r in same if r.get("peak_gpu_mb") is not None]
            line += f" {max(gpu_peaks):.0f} |" if gpu_peaks else " - |"
        print(line)
    for fw, setting, b in keys:
        if fw != "jax":
            continue
        ratios, baselines = [], []
        for rnd in rounds:
            torch_rows = [r for r in rows if r["round"] == rnd and r["framework"] == "torch" and r["batch"] == b]
            mine = [r for r in rows if r["round"] == rnd and r["framework"] == "jax" and r["batch"] == b]
            mine = [r for r in mine if _setting(r) == setting]
            if not torch_rows or not mine:
                continue
            best = min(torch_rows, key=lambda r: r[key])
            ratios.append(best[key] / mine[0][key])
            baselines.append(_setting(best))
        if not ratios:
            continue
        base = baselines[0] if len(set(baselines)) == 1 else "its fastest setting in each round"
        line = (
            f"\nbatch {b}: JAX ({setting}) is {float(np.median(ratios)):.2f}x faster per {unit} than PyTorch ({base})"
        )
        if len(ratios) > 1:
            line += " (median over rounds; per round: " + ", ".join(f"{x:.2f}x" for x in ratios) + ")"
        print(line)
    print()


def _setting(row: dict) -> str:
    if row.get("platform", "cpu") != "cpu" and row["framework"] == "torch":
        return "CUDA"
    if row["framework"] == "jax":
        return f"{row['devices']} {row['platform'].upper()} device{'s' if row['devices'] > 1 else ''}"
    return f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()

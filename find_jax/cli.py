"""``find-jax``: the command line. Each subcommand parses flags and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("find_jax")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="diffusers-format model directory, or a hub id already in the local Hugging Face cache (nothing is "
        "downloaded). Default: the shapes-world model shipped with the package.",
    )
    g.add_argument(
        "--weights",
        default="auto",
        choices=("auto", "flax", "pt"),
        help="which weight files to read: Flax msgpack, PyTorch .safetensors/.bin, or auto (Flax first)",
    )
    g.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="float32 (CPU) or bfloat16 (GPU)"
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        help="JAX persistent compilation cache directory (default $FIND_JAX_CACHE_DIR or ~/.cache/find-jax/xla; "
        "'off' disables it)",
    )


def _add_sampler_flags(p: argparse.ArgumentParser, *, defaults_from_preset: bool = False) -> None:
    g = p.add_argument_group("sampler")
    d = (lambda v: None) if defaults_from_preset else (lambda v: v)
    suffix = " (default: the preset's)" if defaults_from_preset else ""
    g.add_argument(
        "--negative-prompt", default="", help="negative prompt for classifier-free guidance (default: empty)"
    )
    g.add_argument("--steps", type=int, default=d(50), help="DDIM steps (default 50)" + suffix)
    g.add_argument(
        "--guidance", type=float, default=d(7.5), help="classifier-free guidance scale (default 7.5)" + suffix
    )
    g.add_argument(
        "--eta",
        type=float,
        default=d(0.0),
        help="DDIM eta: 0 deterministic, 1 DDPM-like (default 0)" + suffix,
    )
    g.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="find-jax",
        description="FIND: fine-tune the initial noise distribution of a frozen diffusion model with policy "
        "optimisation (JAX/Flax).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "sample",
        help="sample images from N(0, I), from given latents, or from a learned distribution (--workdir)",
        description="Sample images. Writes OUT/images.npy [N, H, W, 3] float32 in [0, 1], OUT/latents.npy (the x_T "
        "used), OUT/image_NNN.png and OUT/sample.json.",
    )
    s.add_argument("--prompt", default=None, help="text prompt (default with --workdir: the run's prompt)")
    s.add_argument(
        "--num-images", type=int, default=None, help="number of images (default 1, or the rows of --latents)"
    )
    s.add_argument("--seed", type=int, default=0, help="PRNG seed for x_T draws and eta noise (default 0)")
    s.add_argument(
        "--latents", default=None, help=".npy file of initial latents [N, C, h, w] used instead of draws"
    )
    s.add_argument(
        "--workdir",
        default=None,
        help="a FIND run directory: draw x_T from its learned N(mu, sigma^2) instead of N(0, I); model, prompt and "
        "sampler settings default to the run's",
    )
    s.add_argument("--batch-size", type=int, default=8, help="images per sampler call (default 8)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--overwrite", action="store_true", help="replace images already in --out")
    _add_model_flags(s)
    _add_sampler_flags(s)
    s.set_defaults(func=cmd_sample)
    return parser


def _setup(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("jax", "absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from find_jax.sampler import enable_compilation_cache

    cache = enable_compilation_cache(getattr(args, "cache_dir", None))
    log.debug("compilation cache: %s", cache)


def cmd_sample(args: argparse.Namespace) -> int:
    from find_jax.models import load_model
    from find_jax.sampling import SampleRequest, load_latents, sample_images, write_images

    if args.workdir is not None:
        from find_jax.optimize import sample_from_run

        return sample_from_run(args)
    if args.prompt is None:
        raise SystemExit("find-jax sample: --prompt is required (or --workdir of a FIND run)")
    model = load_model(args.model, dtype=args.dtype, weights=args.weights)
    request = SampleRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_images=args.num_images or 1,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        eta=args.eta,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
    )
    latents = None
    if args.latents:
        latents = load_latents(args.latents, model.latent_shape(args.height, args.width), args.num_images)
    images, latents = sample_images(model, request, latents)
    meta = {
        "model": model.source,
        "fingerprint": model.fingerprint,
        **vars(request),
        "latents_file": args.latents,
    }
    write_images(args.out, images, latents, meta, overwrite=args.overwrite)
    log.info("wrote %d images to %s", len(images), args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup(args)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        # Bad input: one clear line, no traceback (DESIGN §8). --verbose shows the traceback.
        if args.verbose:
            raise
        print(f"find-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

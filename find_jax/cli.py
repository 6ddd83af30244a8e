"""``find-jax``: the command line. Each subcommand parses flags and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("find_jax")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="diffusers-format model directory, or a hub id already in the local Hugging Face cache (nothing is "
        "downloaded). Default: the shapes-world model shipped with the package; with --workdir (sample, evaluate) "
        "each run's own.",
    )
    g.add_argument(
        "--weights",
        default="auto",
        choices=("auto", "flax", "pt"),
        help="which weight files to read: Flax msgpack, PyTorch .safetensors/.bin, or auto (Flax first)",
    )
    g.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16"),
        help="float32 (CPU) or bfloat16 (GPU). Default: float32 (optimize: the model's recommendation, else "
        "float32); with --workdir (sample, evaluate) each run's own",
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        help="JAX persistent compilation cache directory (default $FIND_JAX_CACHE_DIR or ~/.cache/find-jax/xla; "
        "'off' disables it)",
    )


def _add_sampler_flags(p: argparse.ArgumentParser, *, suffix: str) -> None:
    """Sampler flags. Their defaults are None and resolved by the subcommand; ``suffix`` says how (in --help)."""
    from find_jax.envs.base import SAMPLER_DEFAULTS as D

    g = p.add_argument_group("sampler")
    g.add_argument(
        "--negative-prompt", default=None, help="negative prompt for classifier-free guidance (default: empty)"
    )
    g.add_argument("--steps", type=int, default=None, help=f"DDIM steps (default {D.steps}{suffix})")
    g.add_argument(
        "--guidance", type=float, default=None, help=f"classifier-free guidance scale (default {D.guidance}{suffix})"
    )
    g.add_argument(
        "--eta", type=float, default=None, help=f"DDIM eta: 0 deterministic, 1 DDPM-like (default {D.eta:g}{suffix})"
    )
    g.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")


def build_parser() -> argparse.ArgumentParser:
    from find_jax.config import PRESETS

    parser = argparse.ArgumentParser(
        prog="find-jax",
        description="FIND: fine-tune the initial noise distribution of a frozen diffusion model with policy "
        "optimisation (JAX/Flax).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--cpu-devices",
        default=None,
        metavar="N",
        help="run JAX's CPU backend as N devices so the sampler splits its batch over N cores (default: "
        "$FIND_JAX_CPU_DEVICES, else 1; e.g. 2 on a 2-core machine: ~1.6x faster sampling)",
    )
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
    s.add_argument("--latents", default=None, help=".npy file of initial latents [N, C, h, w] used instead of draws")
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
    _add_sampler_flags(s, suffix=", or with --workdir the run's, or the model's recommendation (find_defaults.json)")
    s.set_defaults(func=cmd_sample)

    o = sub.add_parser(
        "optimize",
        help="learn the initial-noise distribution N(mu, sigma^2) for a prompt (FIND)",
        description="FIND: optimise a per-element Gaussian over the initial latent with policy gradients, the "
        "Dynamic Reward Calibration Module and ratio clipping. The workdir receives config.json, metrics.jsonl, "
        "Orbax checkpoints (checkpoints/), final_samples.npy/final_latents.npy/final_rewards.npy, final PNGs and "
        "reward_curve.png. Re-running with the same --workdir resumes; another setup in it is refused.",
    )
    o.add_argument("--prompt", default=None, help="the text prompt to align the distribution with (or --prompts-file)")
    o.add_argument(
        "--prompts-file",
        default=None,
        help="optimise every prompt of a file instead of --prompt: a CSV with a 'Prompts' (and 'Category') "
        "header as DrawBench's, a JSON {prompt: {'category': ...}} or list, or text with one prompt a line. "
        "Writes WORKDIR/prompts.json and one run directory WORKDIR/NNN-<slug>/ per prompt (all with --seed)",
    )
    o.add_argument("--category", default=None, help="with --prompts-file: only the prompts of this category")
    o.add_argument(
        "--batch-prompts",
        type=int,
        default=None,
        help="with --prompts-file: optimise P prompts at once (vmapped update, one sampler call on P*N latents, "
        "the prompt axis sharded over the devices; default 1)",
    )
    o.add_argument(
        "--workdir",
        default=None,
        help="run directory (default: runs/<prompt-slug>, or runs/<prompts-file-name>[-<category>] for a prompt set)",
    )
    o.add_argument(
        "--preset",
        default="paper",
        choices=tuple(PRESETS),
        help="paper: the paper's method (default); official: the public PyTorch code's behaviour; "
        "tiny: a few iterations for smoke tests",
    )
    o.add_argument(
        "--reward",
        default=None,
        help="reward name (default: the model's recommendation, e.g. 'shapes' for the shipped model, "
        "else 'imagereward'); see `find-jax rewards`",
    )
    o.add_argument("--reward-path", default=None, help="directory holding the reward model's weights")
    o.add_argument(
        "--reward-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra reward factory option (repeatable; VALUE is parsed as JSON when it can be)",
    )
    o.add_argument("--iterations", type=int, default=None, help="FIND iterations (paper: 150)")
    o.add_argument("--samples-per-iter", type=int, default=None, help="noises sampled per iteration (paper: 1)")
    o.add_argument("--seed", type=int, default=None, help="the run's seed (default 0)")
    o.add_argument("--lr", type=float, default=None, help="AdamW learning rate on (mu, sigma) (paper: 1e-3)")
    o.add_argument("--clip-eps", type=float, default=None, help="ratio clipping epsilon (paper 0.02, official 0.2)")
    o.add_argument("--no-drcm", action="store_true", help="ablation: raw reward instead of r - V (w/o DRCM)")
    o.add_argument("--no-rca", action="store_true", help="ablation: plain REINFORCE, no ratio clipping (w/o RCA)")
    o.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint every K iterations")
    o.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    _add_model_flags(o)
    _add_sampler_flags(o, suffix=", or the model's recommendation (find_defaults.json), else the preset's")
    o.set_defaults(func=cmd_optimize)

    v = sub.add_parser(
        "evaluate",
        help="score base vs optimised images (same seeds) for every prompt of a FIND workdir",
        description="For each prompt of a batch workdir (or one run directory): sample N images from N(0, I) and "
        "from the learned distribution with the same noises, score them with each reward, and write "
        "OUT/eval.md and OUT/eval.json (per-prompt and per-category means with 95% intervals, optimisation time "
        "per prompt), OUT/grids/NNN-<slug>.png (top row base, bottom row FIND) and OUT/reward_curves.png.",
    )
    v.add_argument("--workdir", required=True, help="a `find-jax optimize` workdir (prompt set or single run)")
    v.add_argument(
        "--reward",
        default=None,
        help="reward name(s), comma-separated, e.g. imagereward,aesthetic (default: the runs' optimisation reward)",
    )
    v.add_argument(
        "--reward-option",
        action="append",
        default=[],
        metavar="REWARD:KEY=VALUE",
        help="option for one reward's factory, e.g. color:color=red or imagereward:path=DIR (repeatable; VALUE "
        "is parsed as JSON when it can be); a reward the runs optimised also gets their options",
    )
    v.add_argument("--num-images", type=int, default=4, help="images per prompt and distribution (default 4)")
    v.add_argument("--seed", type=int, default=0, help="seed of the shared noises (default 0)")
    v.add_argument("--batch-size", type=int, default=8, help="images per sampler call (default 8)")
    v.add_argument("--out", default=None, help="output directory (default WORKDIR/eval)")
    v.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    v.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    _add_model_flags(v)
    v.set_defaults(func=cmd_evaluate)

    e = sub.add_parser(
        "export",
        help="write a run's mu and sigma for the PyTorch reference code",
        description="Export the learned distribution: npz (mu, sigma [C, h, w]) or pt (torch.save of "
        "{'mean', 'std'} tensors [1, C, h, w], as the public PyTorch code stores them).",
    )
    e.add_argument("--workdir", required=True, help="a FIND run directory")
    e.add_argument("--format", default="npz", choices=("npz", "pt"))
    e.add_argument("--out", required=True, help="output file")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("rewards", help="list the registered rewards and where their weights come from")
    r.set_defaults(func=cmd_rewards)
    return parser


def _slug(text: str) -> str:
    from find_jax.prompts import slugify

    return slugify(text, max_len=60)


def _progress(args: argparse.Namespace):
    """The progress bar the CLI draws for the library's progress reports (nothing with --quiet)."""
    from find_jax.progress import ProgressBar

    return ProgressBar(0, quiet=getattr(args, "quiet", False))


def _reward_options(args: argparse.Namespace) -> dict:
    import json

    options = {}
    for item in args.reward_option:
        if "=" not in item:
            raise ValueError(f"--reward-option takes KEY=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.reward_path:
        options["path"] = args.reward_path
    return options


def cmd_optimize(args: argparse.Namespace) -> int:
    from find_jax.interrupts import interrupts
    from find_jax.optimize import make_config, run
    from find_jax.report import write_run_report

    if args.prompts_file is not None and args.prompt is not None:
        raise ValueError("give --prompt TEXT or --prompts-file FILE, not both")
    if args.prompts_file is None:
        if args.prompt is None:
            raise ValueError("give the prompt to optimise: --prompt TEXT, or --prompts-file FILE for a prompt set")
        for flag, value in (("--category", args.category), ("--batch-prompts", args.batch_prompts)):
            if value is not None:
                raise ValueError(f"{flag} needs --prompts-file")
    overrides = dict(
        prompt=args.prompt,
        model=args.model,
        reward=args.reward,
        iterations=args.iterations,
        samples_per_iter=args.samples_per_iter,
        seed=args.seed,
        lr=args.lr,
        clip_eps=args.clip_eps,
        checkpoint_every=args.checkpoint_every,
        negative_prompt=args.negative_prompt or None,
        steps=args.steps,
        guidance=args.guidance,
        eta=args.eta,
        height=args.height,
        width=args.width,
        dtype=args.dtype,
    )
    options = _reward_options(args)
    if options:
        overrides["reward_options"] = options
    if args.no_drcm:
        overrides["use_drcm"] = False
    if args.no_rca:
        overrides["use_rca"] = False
    config = make_config(args.preset, **overrides)
    if args.prompts_file is not None:
        return _optimize_prompt_set(args, config)
    workdir = Path(args.workdir or Path("runs") / _slug(args.prompt))
    log.info("FIND %s preset, %d iterations, reward %s -> %s", args.preset, config.iterations, config.reward, workdir)
    with interrupts() as stop:
        state = run(config, workdir, progress=_progress(args), should_stop=stop, weights=args.weights)
    summary = write_run_report(workdir)
    log.info("done: step %d, %s", int(state.step), summary)
    return 0


def _optimize_prompt_set(args: argparse.Namespace, config) -> int:
    from find_jax.interrupts import interrupts
    from find_jax.optimize import batch_summary, run_batch
    from find_jax.prompts import read_prompts

    items = read_prompts(args.prompts_file, category=args.category)
    batch_prompts = 1 if args.batch_prompts is None else args.batch_prompts
    if batch_prompts < 1:
        raise ValueError(f"--batch-prompts must be >= 1; got {batch_prompts}")
    name = Path(args.prompts_file).stem + (f"-{args.category}" if args.category else "")
    workdir = Path(args.workdir or Path("runs") / _slug(name))
    log.info(
        "FIND %s preset over %d prompts, %d at a time, %d iterations, reward %s -> %s",
        args.preset,
        len(items),
        batch_prompts,
        config.iterations,
        config.reward,
        workdir,
    )
    with interrupts() as stop:
        result = run_batch(
            config,
            items,
            workdir,
            batch_prompts=batch_prompts,
            progress=_progress(args),
            should_stop=stop,
            weights=args.weights,
        )
    log.info("done: %s", batch_summary(result))
    if result.failed:
        for r in result.failed:
            print(f"find-jax optimize: prompt {r.index} {r.prompt!r} failed: {r.error}", file=sys.stderr)
        return 1
    return 0


def _json_or_text(value: str):
    import json

    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from find_jax.evaluate import evaluate, list_runs
    from find_jax.rundir import read_run

    rewards = args.reward
    if rewards is None:
        entries = list_runs(args.workdir)
        rewards = read_run(entries[0].run_dir)[0].reward
    options: dict = {}
    for item in args.reward_option:
        name, sep, rest = item.partition(":")
        if not sep or "=" not in rest or not name:
            raise ValueError(f"--reward-option takes REWARD:KEY=VALUE; got {item!r}")
        key, value = rest.split("=", 1)
        options.setdefault(name, {})[key] = _json_or_text(value)
    model = None
    if args.model is not None:
        from find_jax.envs import load_model

        model = load_model(args.model, dtype=args.dtype or "float32", weights=args.weights)
    report = evaluate(
        args.workdir,
        rewards=rewards,
        num_images=args.num_images,
        seed=args.seed,
        batch_size=args.batch_size,
        out=args.out,
        overwrite=args.overwrite,
        progress=_progress(args),
        model=model,
        reward_options=options,
        dtype=args.dtype,
        weights=args.weights,
    )
    out = Path(args.out) if args.out else Path(args.workdir) / "eval"
    for c in report["categories"]:
        if c["category"] == "all":
            for name, r in c["rewards"].items():
                base, find = r["base"]["mean"], r["find"]["mean"]
                if base is not None:
                    log.info("%s over %d prompts: base %.4f -> FIND %.4f", name, c["prompts"], base, find)
    log.info("wrote %s and %s", out / "eval.md", out / "eval.json")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from find_jax.export import export

    out = export(args.workdir, args.format, args.out, overwrite=args.overwrite)
    log.info("wrote %s", out)
    return 0


def cmd_rewards(args: argparse.Namespace) -> int:
    from reward_models import available, spec

    names = available()
    width = max(len(n) for n in names)
    for name in names:
        s = spec(name)
        print(f"{name:{width}s}  {s.description}  [weights: {s.weights}]")
    return 0


def _setup(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("jax", "absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from find_jax.envs.devices import configure_cpu_devices, enable_compilation_cache

    configure_cpu_devices(args.cpu_devices)
    cache = enable_compilation_cache(getattr(args, "cache_dir", None))
    log.debug("compilation cache: %s", cache)


def cmd_sample(args: argparse.Namespace) -> int:
    from find_jax import envs
    from find_jax.envs.base import sampler_settings
    from find_jax.sampling import (
        SampleRequest,
        check_latents,
        check_out_dir,
        read_latents_file,
        sample_from_run,
        sample_media,
        write_images,
    )

    # Everything that can be checked without the model is checked before it loads (seconds for large models).
    flags = dict(
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        eta=args.eta,
        height=args.height,
        width=args.width,
    )
    check_out_dir(args.out, overwrite=args.overwrite)
    if args.workdir is not None:
        from find_jax.rundir import read_run

        if args.latents:
            raise ValueError(
                "--latents cannot be combined with --workdir: the latents are drawn from the run's learned "
                "distribution (drop --workdir to sample from given latents)"
            )
        config, _ = read_run(args.workdir)
        request = SampleRequest(
            prompt=args.prompt or config.prompt,
            settings=sampler_settings(config, **flags),
            num_images=args.num_images or 1,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        images, latents, meta = sample_from_run(
            args.workdir, request, model_spec=args.model, dtype=args.dtype, weights=args.weights
        )
        write_images(args.out, images, latents, meta, overwrite=args.overwrite)
        log.info("wrote %d images from the distribution learned in %s to %s", len(images), args.workdir, args.out)
        return 0
    if args.prompt is None:
        raise ValueError("--prompt is required (or --workdir of a FIND run)")
    from find_jax.optimize import model_defaults

    recommended = {k: v for k, v in model_defaults(args.model).items() if k in ("steps", "guidance", "eta")}
    request = SampleRequest(
        prompt=args.prompt,
        settings=sampler_settings(None, **{**recommended, **{k: v for k, v in flags.items() if v is not None}}),
        num_images=args.num_images or 1,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    raw = read_latents_file(args.latents) if args.latents else None  # a bad file is refused before loading
    model = envs.load_model(args.model, dtype=args.dtype or "float32", weights=args.weights)
    env = envs.make_environment(model, request.settings)
    latents = None
    if raw is not None:
        latents = check_latents(raw, env.latent_shape, args.num_images, args.latents)
    images, latents = sample_media(env, request, latents)
    meta = {
        "model": model.source,
        "fingerprint": model.fingerprint,
        "dtype": args.dtype or "float32",
        **request.record(),
        "latents_file": args.latents,
    }
    write_images(args.out, images, latents, meta, overwrite=args.overwrite)
    log.info("wrote %d images to %s", len(images), args.out)
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or an unusable run directory: reported in one line, not a traceback."""
    from find_jax.checkpoint import CheckpointError
    from find_jax.rundir import BadRewardError, RunDirError

    return (FileNotFoundError, FileExistsError, ValueError, RunDirError, BadRewardError, CheckpointError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup(args)
    except ValueError as e:
        print(f"find-jax: error: {e}", file=sys.stderr)
        return 2
    from find_jax.loop import Interrupted

    try:
        return args.func(args)
    except Interrupted as e:
        # The first Ctrl-C / SIGTERM finished the iteration and checkpointed (a second one exits at once).
        print(f"find-jax {args.command}: {e}", file=sys.stderr)
        from find_jax.interrupts import EXIT_CODES

        return EXIT_CODES.get(e.signal, 130)
    except KeyboardInterrupt:
        print(f"find-jax {args.command}: interrupted again; exiting at once", file=sys.stderr)
        return 130
    except _user_errors() as e:
        # Bad input: one clear line, no traceback (DESIGN §8). --verbose shows the traceback.
        if args.verbose:
            raise
        print(f"find-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

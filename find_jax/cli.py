"""``find-jax``: the command line. Each subcommand parses flags and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from find_jax.cli_args import build_parser

log = logging.getLogger("find_jax")


def _slug(text: str) -> str:
    from find_jax.prompts import slugify

    return slugify(text, max_len=60)


def _sampler_flags(args: argparse.Namespace) -> dict:
    """The sampler flags as :class:`~find_jax.envs.base.SamplerSettings` fields (None: not given)."""
    from find_jax.envs.base import SAMPLER_FIELDS

    return {name: getattr(args, name) for name in SAMPLER_FIELDS}


def _progress(args: argparse.Namespace):
    """The progress bar the CLI draws for the library's progress reports (nothing with --quiet)."""
    from find_jax.progress import ProgressBar

    return ProgressBar(0, quiet=getattr(args, "quiet", False))


def _reward_options(args: argparse.Namespace) -> dict:
    from find_jax.config import parse_assignment

    options = dict(parse_assignment(item, "--reward-option KEY=VALUE") for item in args.reward_option)
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
        mu_grid=args.mu_grid,
        checkpoint_every=args.checkpoint_every,
        **_sampler_flags(args),
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from find_jax.evaluate import evaluate, list_runs
    from find_jax.rundir import read_run

    rewards = args.reward
    if rewards is None:
        entries = list_runs(args.workdir)
        rewards = read_run(entries[0].run_dir)[0].reward
    from find_jax.config import parse_assignment

    options: dict = {}
    for item in args.reward_option:
        name, sep, rest = item.partition(":")
        try:
            if not sep or not name:
                raise ValueError(item)
            key, value = parse_assignment(rest)
        except ValueError:
            raise ValueError(f"{item!r} is not --reward-option REWARD:KEY=VALUE") from None
        options.setdefault(name, {})[key] = value
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
    flags = _sampler_flags(args)
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
            num_images=1 if args.num_images is None else args.num_images,
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
        num_images=1 if args.num_images is None else args.num_images,
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
    log.info("wrote %d %s to %s", len(images), "videos" if images.ndim == 5 else "images", args.out)
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
        return COMMANDS[args.command_name](args)
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


COMMANDS = {
    "sample": cmd_sample,
    "optimize": cmd_optimize,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "rewards": cmd_rewards,
}


if __name__ == "__main__":
    sys.exit(main())

"""``find-jax``'s flags: one parser per subcommand, with the sampler defaults read from their definition
(:class:`find_jax.envs.base.SamplerSettings`) and the presets from :data:`find_jax.config.PRESETS`."""

from __future__ import annotations

import argparse


def add_model_flags(p: argparse.ArgumentParser) -> None:
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


def add_sampler_flags(p: argparse.ArgumentParser, *, suffix: str) -> None:
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
    g.add_argument(
        "--num-frames", type=int, default=None, help="video models: frames per video (default: the model's, 16)"
    )


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
    add_model_flags(s)
    add_sampler_flags(s, suffix=", or with --workdir the run's, or the model's recommendation (find_defaults.json)")
    s.set_defaults(command_name="sample")

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
    o.add_argument(
        "--mu-grid",
        type=int,
        default=None,
        help="learn mu on a G x G grid per channel, nearest-upsampled (0 = per element, the paper)",
    )
    o.add_argument("--clip-eps", type=float, default=None, help="ratio clipping epsilon (paper 0.02, official 0.2)")
    o.add_argument("--no-drcm", action="store_true", help="ablation: raw reward instead of r - V (w/o DRCM)")
    o.add_argument("--no-rca", action="store_true", help="ablation: plain REINFORCE, no ratio clipping (w/o RCA)")
    o.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint every K iterations")
    o.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    add_model_flags(o)
    add_sampler_flags(o, suffix=", or the model's recommendation (find_defaults.json), else the preset's")
    o.set_defaults(command_name="optimize")

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
    add_model_flags(v)
    v.set_defaults(command_name="evaluate")

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
    e.set_defaults(command_name="export")

    r = sub.add_parser("rewards", help="list the registered rewards and where their weights come from")
    r.set_defaults(command_name="rewards")
    return parser

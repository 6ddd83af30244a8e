"""Evaluate FIND on the shipped shapes-world model (exact alignment, ground truth) at equal reward calls: base
model, best-of-N random search, the FIND presets, the two ablations and the variants that spend the same calls
differently (``evaluate_shapes.EQUAL_CALLS``). Writes ``OUT/results.json`` and ``OUT/results.md``.

    python scripts/evaluate_shapes.py --workdir runs/eval_shapes            # README table (about an hour of CPU)
    python scripts/evaluate_shapes.py --workdir runs/tune --set tuning --no-search \
        --method find_paper --method lr1e-2=paper:lr=0.01                  # the separate tuning prompts
    python scripts/evaluate_shapes.py --workdir runs/smoke --quick          # seconds: 1+1 prompts, tiny settings

FIND runs are checkpointed in ``WORKDIR/<method>/<prompt>``: an interrupted evaluation resumes.
``FIND_JAX_CPU_DEVICES=2`` splits the sampler's batch over two CPU cores (README, "Several devices").
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from find_jax import evaluate_shapes as ev
    from find_jax.envs.devices import configure_cpu_devices, enable_compilation_cache

    configure_cpu_devices()  # $FIND_JAX_CPU_DEVICES, before JAX starts

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="where FIND runs and results go")
    p.add_argument("--model", default=None, help="saved shapes-model directory (default: the shipped model)")
    p.add_argument("--set", choices=("eval", "tuning"), default="eval", help="evaluation sets or the tuning set")
    p.add_argument("--num-images", type=int, default=64, help="fresh samples per prompt and method")
    p.add_argument("--calls", type=int, default=150, help="reward calls per prompt and method (FIND: iterations x N)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--method",
        action="append",
        dest="methods",
        help="a FIND variant to run, repeatable: one of "
        + ", ".join(ev.KNOWN_METHODS)
        + ", or NAME=PRESET[:FIELD=VALUE,...] "
        "(e.g. lr3e-2=paper:lr=0.03); default: the full equal-calls table",
    )
    p.add_argument("--no-search", action="store_true", help="skip the best-of-N random search")
    p.add_argument("--batch-prompts", type=int, default=6, help="prompts optimised at once (one sampler call)")
    p.add_argument(
        "--quick", action="store_true", help="smoke test: one prompt per set, 4 images, 20 reward calls, 2 DDIM steps"
    )
    args = p.parse_args(argv)
    enable_compilation_cache()
    kw = dict(
        model=args.model,
        n_images=args.num_images,
        calls=args.calls,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        methods=tuple(ev.parse_method(m) for m in (args.methods or ev.EQUAL_CALLS)),
        search=not args.no_search,
        batch_prompts=args.batch_prompts,
    )
    if args.set == "tuning":
        kw.update(rare=(), common=(), tuning=ev.TUNING, ablation=ev.TUNING)
    if args.quick:
        kw.update(rare=ev.RARE[:1], common=ev.COMMON[:1], ablation=ev.RARE[:1], n_images=4, calls=20, steps=2)
    out = Path(args.workdir)

    def write(results: dict) -> str:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        md = ev.to_markdown(results)
        (out / "results.md").write_text(md)
        return md

    log = functools.partial(print, flush=True)  # progress shows in a redirected log (nohup) as it happens
    print(write(ev.evaluate(args.workdir, on_update=write, log=log, **kw)))


if __name__ == "__main__":
    main()

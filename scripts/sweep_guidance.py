"""Exact alignment of the shipped shapes model's base samples at several guidance scales, on the tuning prompts.

The study behind the model's default CFG (README, "Model quality"): for each scale and each tuning prompt
(``TUNING_COMMON``, six common captions, and ``TUNING``, the four rare ones of the FIND tuning study; none of
them is in the evaluation sets), sample ``--num-images`` x_T ~ N(0, I) (the same x_T at every scale, seed
``--seed``) with the model's DDIM steps and eta 0, and score them with the exact scorer.

    python scripts/sweep_guidance.py                                  # CFG 1, 1.5, 2, 2.5, 3, 4, 5, 7.5
    python scripts/sweep_guidance.py --guidance 2,5 --json cfg.json
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guidance", default="1,1.5,2,2.5,3,4,5,7.5", help="comma-separated CFG scales")
    p.add_argument("--num-images", type=int, default=64, help="x_T draws per prompt and scale")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    scales = [float(g) for g in a.guidance.split(",") if g.strip()]
    if not scales or min(scales) < 0 or a.num_images < 1:
        p.error("--guidance needs scales >= 0 and --num-images >= 1")

    from find_jax.envs.devices import configure_cpu_devices

    configure_cpu_devices()  # $FIND_JAX_CPU_DEVICES, before JAX starts

    import jax
    import numpy as np

    from find_jax import evaluate_shapes as ev
    from find_jax.envs import load_model, make_environment, sampler_settings
    from find_jax.envs.base import bind_one
    from find_jax.optimize import model_defaults

    model = load_model(None)
    steps = int(model_defaults(None).get("steps", 20))
    groups = {"common": ev.TUNING_COMMON, "rare": ev.TUNING}
    key = jax.random.PRNGKey(a.seed)
    result = {"num_images": a.num_images, "seed": a.seed, "steps": steps, "scales": {}}
    for g in scales:
        per_prompt = {}
        env = make_environment(model, sampler_settings(None, steps=steps, guidance=g))  # one compiled sampler per scale
        x = jax.random.normal(key, (a.num_images, *env.latent_shape))
        for prompts in groups.values():
            for prompt in prompts:
                images = np.asarray(bind_one(env, prompt)(x, key))
                per_prompt[prompt] = float(ev.score_images(images, prompt).exact.mean())
        means = {name: float(np.mean([per_prompt[q] for q in prompts])) for name, prompts in groups.items()}
        result["scales"][f"{g:g}"] = {"prompts": per_prompt, **means}
        print(f"CFG {g:g}: common {means['common']:.3f}  rare {means['rare']:.3f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()

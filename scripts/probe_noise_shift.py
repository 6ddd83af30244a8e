"""How much can a shift of the initial-noise mean help a prompt, given FIND's budget of reward calls?

For each prompt: draw ``--calls`` x_T ~ N(0, I), score them with the exact shapes scorer, and form the
policy-gradient estimate at N(0, I) that those calls allow, ``d = mean_i(A_i * x_i)`` with normalised
advantages ``A_i`` (Eq. 8 with N = calls, at mu = 0, sigma = 1). Then sample 64 *fresh* x_T ~ N(k * d/|d|, I)
for several step lengths ``k`` (in standard deviations of x_T along d) and report exact alignment. ``k = 0`` is
the base model. This separates "is there a usable signal in 150 reward calls" from "does the optimiser follow it".

``--colour-shifts`` adds a hand-made direction instead of a learned one: every element moves by ``s * (2 rgb - 1)``
of the caption's (first) colour (s = 1 is a shift of ~55 standard deviations along that unit direction). It
asks whether *some* Gaussian mean helps at all, whatever the reward calls could find.

    python scripts/probe_noise_shift.py --set tuning
    python scripts/probe_noise_shift.py --set tuning --pools "" --colour-shifts 0.25,0.5,1
    python scripts/probe_noise_shift.py --set tuning --graded    # the direction from the graded reward
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    import jax
    import numpy as np

    from find_jax.envs.devices import configure_cpu_devices

    configure_cpu_devices()  # $FIND_JAX_CPU_DEVICES, before JAX starts

    from find_jax import evaluate_shapes as ev
    from find_jax.envs import load_model, make_environment, sampler_settings
    from find_jax.envs.base import bind_one
    from find_jax.envs.image.shapes import world
    from find_jax.optimize import model_defaults

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=("tuning", "rare"), default="tuning")
    p.add_argument("--calls", type=int, default=150, help="reward calls that estimate the direction")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--steps-k", default="4,8", help="step lengths along the estimated direction")
    p.add_argument(
        "--pools",
        default="1,4,16",
        help="block sizes: the direction is averaged over b x b blocks of each channel (a mean with fewer "
        "free parameters: 16 = one number per channel), 1 = per element as in the paper",
    )
    p.add_argument("--colour-shifts", default="", help="per-element sizes s of the caption-colour shift, e.g. 0.5,1")
    p.add_argument(
        "--graded",
        action="store_true",
        help="estimate the direction with the graded shapes reward (near misses of colour and shape earn more)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    prompts = ev.TUNING if args.set == "tuning" else ev.RARE
    ks = [float(k) for k in args.steps_k.split(",")]
    pools = [int(b) for b in args.pools.split(",") if b]
    colour_shifts = [float(c) for c in args.colour_shifts.split(",") if c]
    model = load_model(None)
    guidance = model_defaults(None).get("guidance", 5.0)
    out = {}
    environment = make_environment(model, sampler_settings(None, steps=20, guidance=guidance))
    for prompt in prompts:
        env = bind_one(environment, prompt)
        rng = jax.random.PRNGKey(args.seed)
        xs = np.asarray(jax.random.normal(jax.random.fold_in(rng, 1), (args.calls, *environment.latent_shape)))
        imgs = np.concatenate([np.asarray(env(xs[i : i + 50], rng)) for i in range(0, args.calls, 50)])
        s = ev.score_images(imgs, prompt, graded=args.graded)
        adv = (s.reward - s.reward.mean()) / (s.reward.std() + 1e-8)
        d = np.tensordot(adv, xs, axes=1) / args.calls  # [C, h, w]
        z = np.asarray(jax.random.normal(jax.random.fold_in(rng, 2), (args.num_images, *env.latent_shape)))
        row = {
            "calls_exact": float(s.exact.mean()),
            "calls_reward_levels": len(np.unique(np.round(s.reward, 4))),  # distinct rewards among the calls
            "base": float(ev.score_images(np.asarray(env(z, rng)), prompt).exact.mean()),
        }
        for b in pools:
            c, h, w = d.shape
            pooled = d.reshape(c, h // b, b, w // b, b).mean(axis=(2, 4))
            d_b = np.repeat(np.repeat(pooled, b, axis=1), b, axis=2)
            d_hat = d_b / np.linalg.norm(d_b)
            for k in ks:
                images = np.asarray(env(z + k * d_hat, rng))
                row[f"b{b}k{k:g}"] = float(ev.score_images(images, prompt).exact.mean())
        rgb = np.asarray(world.COLOURS[world.parse_caption(prompt).colour], np.float32)
        colour_dir = np.zeros((env.latent_shape[0], 1, 1), np.float32)  # coordinate planes (if any) unshifted
        n_image = env.latent_shape[0] - getattr(model.decoder, "coord_channels", 0)
        colour_dir[:n_image, 0, 0] = np.tile(2 * rgb - 1, n_image // 3)  # channel (dy*2+dx)*3 + c
        for c in colour_shifts:
            images = np.asarray(env(z + c * colour_dir, rng))
            row[f"colour{c:g}"] = float(ev.score_images(images, prompt).exact.mean())
        out[prompt] = row
        print(f"{prompt:44s} " + "  ".join(f"{a} {b:.2f}" for a, b in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()

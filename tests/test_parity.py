"""Parity oracle: diffusers' PyTorch StableDiffusionPipeline + DDIMScheduler on the same weights and x_T."""

from __future__ import annotations

import jax
import numpy as np
import torch

from find_jax.envs import SamplerSettings, make_environment

torch.set_num_threads(1)


def test_matches_diffusers_pytorch_pipeline(tiny_sd_dir, tiny_model):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    prompts = ["a photo of a red cat", "a blue dog"]
    env = make_environment(tiny_model, SamplerSettings(steps=10, guidance=7.5, eta=0.0))
    x_t = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, *env.latent_shape)), dtype=np.float32)
    keys = jax.numpy.stack([jax.random.PRNGKey(1)] * 2)
    ours = np.asarray(env.bind(prompts)(x_t[:, None], keys))[:, 0]  # [P=2, N=1, ...]

    pipe = StableDiffusionPipeline.from_pretrained(
        str(tiny_sd_dir), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        prompts,
        latents=torch.from_numpy(x_t),
        num_inference_steps=10,
        guidance_scale=7.5,
        eta=0.0,
        output_type="np",
        height=16,
        width=16,
    ).images
    assert ref.shape == ours.shape == (2, 16, 16, 3)
    inside = (ref > 0.01) & (ref < 0.99)
    assert inside.mean() > 0.3, "too many saturated pixels for a meaningful comparison"
    assert np.abs(ref - ours).max() <= 1e-3

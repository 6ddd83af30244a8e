"""The jitted DDIM scan sampler: schedule vs diffusers, keyed eta noise, determinism, no recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from find_jax.envs import SamplerSettings, make_environment
from find_jax.envs.ddim import ddim_schedule, ddim_step
from find_jax.envs.devices import enable_compilation_cache
from find_jax.envs.text import tokenize
from find_jax.testing import SD15_SCHEDULER

torch.set_num_threads(1)

CONFIGS = [
    SD15_SCHEDULER,
    dict(
        SD15_SCHEDULER,
        set_alpha_to_one=True,
        steps_offset=0,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
    ),
    dict(SD15_SCHEDULER, timestep_spacing="trailing", prediction_type="v_prediction"),
    dict(SD15_SCHEDULER, timestep_spacing="linspace", beta_schedule="squaredcos_cap_v2"),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("steps", [10, 50])
def test_schedule_matches_diffusers_ddim(cfg, steps):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(steps)
    s = ddim_schedule(cfg, steps)
    np.testing.assert_array_equal(s.timesteps, ref.timesteps.numpy())
    ac = ref.alphas_cumprod.numpy()
    np.testing.assert_allclose(s.alpha, ac[s.timesteps], rtol=1e-5)
    prev = s.timesteps - ref.config.num_train_timesteps // steps
    want_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], ref.final_alpha_cumprod.numpy())
    np.testing.assert_allclose(s.alpha_prev, want_prev, rtol=1e-5)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers_including_eta_noise(pred, eta):
    from diffusers import DDIMScheduler

    cfg = dict(SD15_SCHEDULER, prediction_type=pred)
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(20)
    s = ddim_schedule(cfg, 20)
    rng = np.random.default_rng(0)
    x, out, z = (rng.standard_normal((2, 4, 8, 8)).astype(np.float32) for _ in range(3))
    for i in (0, 7, 19):
        want = ref.step(
            torch.from_numpy(out),
            int(s.timesteps[i]),
            torch.from_numpy(x),
            eta=eta,
            variance_noise=torch.from_numpy(z),
        ).prev_sample.numpy()
        got = ddim_step(
            jnp.asarray(x),
            jnp.asarray(out),
            s.alpha[i],
            s.alpha_prev[i],
            jnp.asarray(z),
            eta=eta,
            prediction_type=pred,
        )
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="steps"):
        ddim_schedule(SD15_SCHEDULER, 0)
    with pytest.raises(ValueError, match="beta_schedule"):
        ddim_schedule(dict(SD15_SCHEDULER, beta_schedule="cubic"), 10)


PROMPTS = ["a photo of a red cat", "a blue dog"]


@pytest.fixture(scope="module")
def env(tiny_model):
    return make_environment(tiny_model, SamplerSettings(steps=8, guidance=7.5, eta=0.0))


def _latents(seed, n=2, shape=(4, 8, 8), p=None):
    x = jax.random.normal(jax.random.PRNGKey(seed), (n, *shape))
    return x if p is None else x.reshape(p, n // p, *shape)


def _keys(*seeds):
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def test_output_shape_range_and_determinism(env):
    env_fn = env.bind(PROMPTS)
    x = _latents(0, p=2)  # [P=2, N=1, 4, 8, 8]
    a = np.asarray(env_fn(x, _keys(0, 0)))
    b = np.asarray(env_fn(x, _keys(5, 6)))  # eta = 0: the keys are unused
    assert a.shape == (2, 1, 16, 16, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    c = np.asarray(env_fn(_latents(1, p=2), _keys(0, 0)))
    assert np.abs(a - c).max() > 1e-3  # other x_T, other images


def test_eta_noise_is_keyed_per_prompt(tiny_model):
    env = make_environment(tiny_model, SamplerSettings(steps=8, guidance=7.5, eta=1.0))
    one = env.bind(["a red cat"])
    x = _latents(0, n=1, p=1)
    a = np.asarray(one(x, _keys(0)))
    b = np.asarray(one(x, _keys(0)))
    c = np.asarray(one(x, _keys(1)))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # In a group, prompt p's noise comes from rngs[p] alone: the same as sampling it by itself.
    two = env.bind(["a blue dog", "a red cat"])
    pair = np.asarray(two(jnp.concatenate([_latents(3, n=1, p=1), x]), _keys(7, 0)))
    np.testing.assert_allclose(pair[1], a[0], atol=1e-5)


def test_changing_prompts_or_latents_does_not_recompile(env):
    env_fn = env.bind(PROMPTS)
    env_fn(_latents(0, p=2), _keys(0, 0))
    size_before = env.sample_fn._cache_size()
    env_fn(_latents(3, p=2), _keys(1, 1))
    env.bind(["a dog", "red"])(_latents(4, p=2), _keys(2, 2))  # other prompts, same compiled sampler
    assert env.sample_fn._cache_size() == size_before == 1


def test_no_gradient_flows_through_the_environment(env):
    cond, uncond = env.encode(PROMPTS)
    g = jax.grad(lambda x: env.sample_fn(env.params, x, cond, uncond, _keys(0, 0)).sum())(_latents(0))
    assert float(jnp.abs(g).max()) == 0.0


def test_prompt_rows_are_prompt_major(env):
    env_fn = env.bind(PROMPTS)
    x = jnp.concatenate([_latents(0, n=1)] * 4).reshape(2, 2, 4, 8, 8)  # P=2 prompts x N=2 samples, same x_T
    img = np.asarray(env_fn(x, _keys(0, 0)))
    np.testing.assert_allclose(img[0, 0], img[0, 1], atol=1e-5)
    np.testing.assert_allclose(img[1, 0], img[1, 1], atol=1e-5)
    assert np.abs(img[0, 0] - img[1, 0]).max() > 1e-3  # different prompts
    with pytest.raises(ValueError, match="latents must be"):
        env_fn(_latents(0, n=3), _keys(0, 0))  # no prompt axis
    with pytest.raises(ValueError, match="latents must be"):
        env_fn(jnp.zeros((2, 1, 4, 4, 4)), _keys(0, 0))
    with pytest.raises(ValueError, match="latents must be"):
        env_fn(jnp.zeros((3, 1, 4, 8, 8)), _keys(0, 0, 0))  # 3 prompts' latents for 2 prompts


def test_video_settings_refused_on_an_image_model(tiny_model):
    with pytest.raises(ValueError, match="num_frames=8 is for video models"):
        make_environment(tiny_model, SamplerSettings(num_frames=8))


def test_bfloat16_sampler_close_to_float32(tiny_sd_dir, env):
    from find_jax.envs import load_model

    m16 = load_model(tiny_sd_dir, dtype="bfloat16")
    e16 = make_environment(m16, SamplerSettings(steps=8, guidance=7.5))
    x = _latents(0, p=2)
    a = np.asarray(env.bind(PROMPTS)(x, _keys(0, 0)))
    b = np.asarray(e16.bind(PROMPTS)(x, _keys(0, 0)))
    assert b.dtype == np.float32 and b.min() >= 0 and b.max() <= 1
    assert np.abs(a - b).mean() < 0.05


def test_prompt_errors_and_truncation(tiny_model, caplog):
    with pytest.raises(ValueError, match="empty"):
        tokenize(tiny_model, ["  "])
    assert tokenize(tiny_model, [""], allow_empty=True).shape == (1, 77)
    with caplog.at_level("WARNING", logger="find_jax.envs.text"):
        ids = tokenize(tiny_model, ["red " * 100])
    assert ids.shape == (1, 77)
    (record,) = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert "text encoder takes (77)" in record.getMessage()  # the model's own limit


def test_persistent_compilation_cache_writes_entries(tmp_path):
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()  # earlier tests compiled without a cache in this process
    cache = enable_compilation_cache(tmp_path / "xla", min_compile_secs=0.0)
    try:
        f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.2345)
        f(jnp.ones((67, 67))).block_until_ready()
        assert any(cache.iterdir())
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()

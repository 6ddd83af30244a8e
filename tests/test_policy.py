"""Gaussian policy (Eq. 6): log-prob by hand, sigma parameterisations, sampling, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from find_jax.policy import (
    gaussian_log_prob,
    init_policy,
    log_prob_fn,
    prior_log_prob,
    project_params,
    rng_sample_fn,
    sigma_fn,
    sigma_to_raw,
)


def test_log_prob_hand_computed_sum_and_mean():
    # Two elements: x=(1, -1), mu=(0, 1), sigma=(1, 2).
    x = jnp.array([[[[1.0, -1.0]]]])  # [N=1, C=1, h=1, w=2]
    mu = jnp.array([[[0.0, 1.0]]])
    sigma = jnp.array([[[1.0, 2.0]]])
    e0 = -0.5 * 1.0 - 0.0 - 0.5 * math.log(2 * math.pi)
    e1 = -0.5 * (2.0 / 2.0) ** 2 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(gaussian_log_prob(x, mu, sigma, reduce="sum"), [e0 + e1], rtol=1e-6)
    np.testing.assert_allclose(gaussian_log_prob(x, mu, sigma, reduce="mean"), [(e0 + e1) / 2], rtol=1e-6)


def test_log_prob_matches_scipy_style_formula_for_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    mu = rng.normal(size=(2, 3, 3)).astype(np.float32)
    sigma = rng.uniform(0.5, 2.0, size=(2, 3, 3)).astype(np.float32)
    ref = (-0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)).sum(axis=(1, 2, 3))
    got = gaussian_log_prob(jnp.asarray(x), jnp.asarray(mu), jnp.asarray(sigma))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(
        prior_log_prob(jnp.asarray(x)), (-0.5 * x**2 - 0.5 * np.log(2 * np.pi)).sum(axis=(1, 2, 3)), rtol=1e-5
    )


@pytest.mark.parametrize("sigma_param", ["log", "softplus", "clamp"])
def test_init_is_standard_normal_and_roundtrips(sigma_param):
    p = init_policy((2, 3, 4), sigma_param=sigma_param)
    assert p.mu.shape == (2, 3, 4) and p.sigma_raw.shape == (2, 3, 4)
    np.testing.assert_array_equal(p.mu, 0.0)
    np.testing.assert_allclose(sigma_fn(p.sigma_raw, sigma_param=sigma_param), 1.0, rtol=1e-6)
    for s in (1e-3, 0.3, 5.0):
        raw = sigma_to_raw(s, sigma_param=sigma_param)
        np.testing.assert_allclose(sigma_fn(raw, sigma_param=sigma_param), s, rtol=1e-5)


@pytest.mark.parametrize("sigma_param", ["log", "softplus"])
def test_sigma_positive_for_any_raw(sigma_param):
    raw = jnp.linspace(-30.0, 30.0, 101)
    assert bool(jnp.all(sigma_fn(raw, sigma_param=sigma_param) > 0))


def test_clamp_projection_keeps_sigma_above_min():
    p = init_policy((1, 2, 2), sigma_param="clamp")
    p = p.replace(sigma_raw=jnp.array([[[-1.0, 0.5], [1e-6, 2.0]]]))
    q = project_params(p, sigma_param="clamp", sigma_min=1e-4)
    np.testing.assert_allclose(q.sigma_raw, [[[1e-4, 0.5], [1e-4, 2.0]]])
    # Other parameterisations are untouched by the projection.
    r = project_params(p, sigma_param="log", sigma_min=1e-4)
    np.testing.assert_array_equal(r.sigma_raw, p.sigma_raw)


def test_samples_have_policy_moments_and_depend_only_on_key():
    p = init_policy((2, 2, 2), sigma_param="log", mu=1.5, sigma=0.5)
    x = rng_sample_fn(jax.random.PRNGKey(0), p, 20000, sigma_param="log")
    assert x.shape == (20000, 2, 2, 2)
    np.testing.assert_allclose(x.mean(0), 1.5, atol=0.02)
    np.testing.assert_allclose(x.std(0), 0.5, atol=0.02)
    y = rng_sample_fn(jax.random.PRNGKey(0), p, 20000, sigma_param="log")
    np.testing.assert_array_equal(x, y)


def test_log_prob_fn_uses_parameterised_sigma():
    p = init_policy((1, 1, 1), sigma_param="softplus", sigma=2.0)
    x = jnp.zeros((1, 1, 1, 1))
    expected = -math.log(2.0) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(log_prob_fn(p, x, sigma_param="softplus"), [expected], rtol=1e-5)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="sigma_param"):
        sigma_fn(jnp.ones(2), sigma_param="exp")
    with pytest.raises(ValueError, match="logprob_reduce"):
        gaussian_log_prob(jnp.ones((1, 1, 1, 1)), jnp.ones((1, 1, 1)), jnp.ones((1, 1, 1)), reduce="max")
    with pytest.raises(ValueError, match="latent_shape"):
        init_policy((4, 0, 8), sigma_param="log")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        init_policy((1, 1, 1), sigma_param="log", sigma=0.0)

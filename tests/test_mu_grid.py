"""The low-frequency mean (``mu_grid``): a projection of mu's gradient that is AdamW on a coarse grid."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from find_jax.config import config_from_json, config_to_dict, config_to_json, get_preset
from find_jax.policy import PolicyParams, block_average
from find_jax.trainer import init_state, make_optimizers
from tests.test_trainer import bandit_reward, identity_env, optimize

SHAPE = (2, 4, 4)


def test_block_average_is_the_orthogonal_projection_onto_block_constants():
    a = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 8, 8))  # rank-generic: [C, F, h, w]
    b = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 8, 8))
    pa = block_average(a, 2)
    np.testing.assert_allclose(block_average(pa, 2), pa, atol=1e-6)  # idempotent
    assert abs(float(jnp.sum((a - pa) * block_average(b, 2)))) < 1e-4  # the residual is orthogonal
    np.testing.assert_allclose(pa[0, 0, :4, :4], jnp.mean(a[0, 0, :4, :4]), atol=1e-6)  # block means kept
    assert len(np.unique(np.round(np.asarray(pa[0, 0]), 5))) == 4  # a 2x2 grid: four values
    np.testing.assert_allclose(block_average(a, 1)[1, 1], jnp.mean(a[1, 1]) * jnp.ones((8, 8)), atol=1e-6)


def test_projected_adamw_equals_adamw_on_the_coarse_grid():
    """The trainer's claim: projecting mu's gradient, then AdamW, is AdamW on m [C, g, g], mu = upsample(m)."""
    g, shape = 2, (2, 4, 4)
    target = jax.random.normal(jax.random.PRNGKey(3), shape)
    cfg = get_preset("paper", lr=0.05, mu_grid=g)
    tx, _ = make_optimizers(cfg)

    def loss(mu, sigma_raw):
        return jnp.sum((mu - target) ** 2 * jnp.linspace(0.5, 2.0, 16).reshape(1, 4, 4)) + jnp.sum(sigma_raw**2)

    def upsample(m):
        return jnp.repeat(jnp.repeat(m, 2, axis=-2), 2, axis=-1)

    params = PolicyParams(mu=jnp.zeros(shape), sigma_raw=jnp.full(shape, 0.3))
    opt = tx.init(params)
    coarse = PolicyParams(mu=jnp.zeros((2, g, g)), sigma_raw=params.sigma_raw)
    ref_tx = optax.adamw(cfg.lr, weight_decay=cfg.weight_decay)
    ref_opt = ref_tx.init(coarse)
    for _ in range(5):
        grads = PolicyParams(*jax.grad(loss, argnums=(0, 1))(params.mu, params.sigma_raw))
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        ref_grads = PolicyParams(
            *jax.grad(lambda m, s: loss(upsample(m), s), argnums=(0, 1))(coarse.mu, coarse.sigma_raw)
        )
        ref_updates, ref_opt = ref_tx.update(ref_grads, ref_opt, coarse)
        coarse = optax.apply_updates(coarse, ref_updates)
    np.testing.assert_allclose(params.mu, upsample(coarse.mu), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params.sigma_raw, coarse.sigma_raw, rtol=1e-6)  # sigma stays per element
    assert float(jnp.abs(params.mu).max()) > 0.1  # it moved


def test_a_find_run_with_mu_grid_learns_a_block_constant_mean(tmp_path):
    cfg = get_preset(
        "paper", prompt="bandit", lr=3e-2, drcm_hidden=(16, 16, 16), iterations=30, mu_grid=2, num_final_samples=0
    )
    state = optimize(cfg, tmp_path / "g2", env_fn=identity_env, reward_fn=bandit_reward, latent_shape=SHAPE)
    mu = np.asarray(state.policy.mu)
    blocks = mu.reshape(2, 2, 2, 2, 2)  # [C, gy, by, gx, bx]
    np.testing.assert_allclose(blocks, blocks[:, :, :1, :, :1] * np.ones_like(blocks), atol=1e-6)
    assert np.abs(mu).max() > 0.05
    full = optimize(
        dataclasses.replace(cfg, mu_grid=0),
        tmp_path / "g0",
        env_fn=identity_env,
        reward_fn=bandit_reward,
        latent_shape=SHAPE,
    )
    m0 = np.asarray(full.policy.mu).reshape(2, 2, 2, 2, 2)
    assert np.abs(m0 - m0[:, :, :1, :, :1]).max() > 1e-3  # per element: not block-constant


def test_mu_grid_bad_values_and_config_json():
    with pytest.raises(ValueError, match="mu_grid must be an integer >= 0"):
        get_preset("paper", mu_grid=-1)
    with pytest.raises(ValueError, match="mu_grid=3 must divide the latent's height and width 4x4"):
        init_state(get_preset("paper", mu_grid=3, drcm_hidden=(8, 8, 8)), SHAPE)
    assert "mu_grid" not in config_to_dict(get_preset("paper"))  # runs recorded before the field hash the same
    cfg = get_preset("paper", mu_grid=4)
    assert config_to_dict(cfg)["mu_grid"] == 4 and config_from_json(config_to_json(cfg)) == cfg

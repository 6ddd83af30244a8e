"""DRCM (Eq. 9-10): features, hand-computed loss, online fitting of a constant expected reward."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from find_jax.drcm import DrcmMLP, drcm_feature_dim, drcm_features, drcm_loss_fn, init_drcm


def test_features_concatenate_mu_sigma_embedding():
    mu = jnp.arange(4.0).reshape(1, 2, 2)
    sigma = jnp.full((1, 2, 2), 2.0)
    f = drcm_features(mu, sigma)
    np.testing.assert_array_equal(f, [0, 1, 2, 3, 2, 2, 2, 2])
    assert drcm_feature_dim((1, 2, 2)) == 8
    g = drcm_features(mu, sigma, jnp.array([7.0, 8.0, 9.0]))
    np.testing.assert_array_equal(g[-3:], [7, 8, 9])
    assert g.shape == (drcm_feature_dim((1, 2, 2), 3),)
    # V_phi is a critic: no gradient flows back into the policy through the features.
    grad = jax.grad(lambda m: jnp.sum(drcm_features(m, sigma)))(mu)
    np.testing.assert_array_equal(grad, 0.0)


def _constant_params(module, feature_dim, value):
    params = init_drcm(jax.random.PRNGKey(0), module, feature_dim)
    params = jax.tree.map(jnp.zeros_like, params)
    last = sorted(params["params"])[-1]  # Dense_3: the output layer
    params["params"][last]["bias"] = jnp.array([value])
    return params


def test_loss_hand_computed_with_mask():
    module = DrcmMLP(hidden=(4, 4, 4))
    params = _constant_params(module, 6, 0.5)  # V_phi == 0.5 for every input
    feats = jnp.ones(6)
    rewards = jnp.array([1.5, -0.5, 100.0])
    loss, pred = drcm_loss_fn(params, module, feats, rewards, jnp.array([True, True, False]))
    np.testing.assert_allclose(pred, 0.5)
    np.testing.assert_allclose(loss, ((0.5 - 1.5) ** 2 + (0.5 + 0.5) ** 2) / 2, rtol=1e-6)
    loss_all, _ = drcm_loss_fn(params, module, feats, rewards[:2])
    np.testing.assert_allclose(loss_all, 1.0, rtol=1e-6)
    loss_none, _ = drcm_loss_fn(params, module, feats, rewards, jnp.zeros(3, bool))
    np.testing.assert_allclose(loss_none, 0.0)


def test_three_hidden_layers_and_scalar_output():
    module = DrcmMLP(hidden=(8, 8, 8))
    params = init_drcm(jax.random.PRNGKey(1), module, 10)
    assert len(params["params"]) == 4  # 3 hidden + output
    assert params["params"]["Dense_0"]["kernel"].shape == (10, 8)
    assert module.apply(params, jnp.ones((5, 10))).shape == (5,)


def test_online_fit_tracks_expected_reward():
    # Noisy rewards around -2 for a fixed distribution: V_phi must learn the mean (Eq. 10 online).
    module = DrcmMLP(hidden=(16, 16, 16))
    feats = jnp.concatenate([jnp.zeros(8), jnp.ones(8)])
    params = init_drcm(jax.random.PRNGKey(2), module, 16)
    tx = optax.adamw(3e-3, weight_decay=0.0)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, r):
        (loss, pred), g = jax.value_and_grad(drcm_loss_fn, has_aux=True)(params, module, feats, r)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, pred

    rewards = -2.0 + 0.3 * jax.random.normal(jax.random.PRNGKey(3), (400, 1))
    for r in rewards:
        params, opt, _ = step(params, opt, r)
    final = float(module.apply(params, feats[None])[0])
    assert abs(final + 2.0) < 0.1, final

"""RCA objective (Eq. 11-13): hand-computed surrogate values, gradients against closed forms, the clip
boundary, and the `official` preset's loss equal to the public PyTorch code's formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from find_jax.config import get_preset
from find_jax.objective import clip_ratio, is_clipped, policy_loss_fn, prior_penalty, rca_objective
from find_jax.policy import PolicyParams, log_prob_fn, prior_log_prob, sigma_to_raw
from find_jax.trainer import Batch, init_state, make_update_fn

EPS = 0.02


def test_surrogate_hand_computed():
    ratio = jnp.array([1.01, 1.5, 0.5, 1.5, 0.5, 1.0])
    adv = jnp.array([2.0, 2.0, 2.0, -2.0, -2.0, -1.0])
    ppo = rca_objective(ratio, adv, clip_eps=EPS, clip_mode="ppo_min")
    # min(rho A, clip(rho) A): inside -> rho A; A>0 & rho>1+e -> (1+e)A; A>0 & rho<1-e -> rho A;
    # A<0 & rho>1+e -> rho A; A<0 & rho<1-e -> (1-e)A.
    np.testing.assert_allclose(ppo, [2.02, 2.04, 1.0, -3.0, -1.96, -1.0], rtol=1e-6)
    clamp = rca_objective(ratio, adv, clip_eps=EPS, clip_mode="clamp")
    np.testing.assert_allclose(clamp, [2.02, 2.04, 1.96, -2.04, -1.96, -1.0], rtol=1e-6)
    np.testing.assert_array_equal(is_clipped(ratio, EPS), [False, True, True, True, True, False])
    with pytest.raises(ValueError, match="clip_mode"):
        rca_objective(ratio, adv, clip_eps=EPS, clip_mode="dual")


def test_clip_boundary_counts_as_inside_and_passes_gradient():
    lo = jnp.float32(1.0 - EPS)
    hi = jnp.float32(1.0 + EPS)
    ratio = jnp.array([lo, hi, jnp.nextafter(hi, 2.0), jnp.nextafter(lo, 0.0)])
    np.testing.assert_array_equal(is_clipped(ratio, EPS), [False, False, True, True])
    grad = jax.grad(lambda r: jnp.sum(clip_ratio(r, EPS)))(ratio)
    np.testing.assert_array_equal(grad, [1.0, 1.0, 0.0, 0.0])  # as torch.clamp: boundaries pass


def _params(mu, sigma):
    return PolicyParams(mu=jnp.asarray(mu), sigma_raw=sigma_to_raw(jnp.asarray(sigma), sigma_param="log"))


KW = dict(sigma_param="log", sigma_min=1e-4, use_rca=True, clip_eps=EPS, max_log_ratio=30.0, kl_weight=0.0)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize(
    ("log_rho", "adv", "mode", "passes"),
    [
        (0.01, 1.5, "ppo_min", True),  # inside the interval: d(-rho A) flows
        (0.01, -1.5, "clamp", True),
        (0.2, 1.5, "ppo_min", False),  # A>0 and rho>1+eps: the clipped term wins, no gradient
        (0.2, -1.5, "ppo_min", True),  # A<0 and rho>1+eps: PPO keeps the pessimistic unclipped term
        (0.2, -1.5, "clamp", False),  # the plain clamp blocks it
        (-0.2, 1.5, "ppo_min", True),  # A>0 and rho<1-eps: unclipped term is the min
        (-0.2, -1.5, "ppo_min", False),
    ],
)
def test_surrogate_gradient_matches_closed_form(log_rho, adv, mode, passes, reduce):
    mu = np.array([[[0.3, -0.2], [0.1, 0.0]]], np.float32)  # [1, 2, 2]
    sigma = np.array([[[1.2, 0.8], [1.0, 0.5]]], np.float32)
    x = np.array([[[[1.0, 0.5], [-0.7, 0.2]]]], np.float32)  # [N=1, 1, 2, 2]
    params = _params(mu, sigma)
    logp = log_prob_fn(params, jnp.asarray(x), sigma_param="log", reduce=reduce)
    logp_ref = logp - log_rho
    w = 3.0
    grads = jax.grad(
        lambda p: policy_loss_fn(
            p,
            jnp.asarray(x),
            logp_ref,
            jnp.array([adv]),
            jnp.array([True]),
            logprob_reduce=reduce,
            clip_mode=mode,
            reward_weight=w,
            **KW,
        )[0]
    )(params)
    rho = np.exp(log_rho)
    z = (x[0] - mu) / sigma
    scale = 1.0 if reduce == "sum" else 1.0 / x[0].size
    # Closed form of d/dtheta [-w A rho(theta)] with d log pi/d mu = (x-mu)/sigma^2, d/d log sigma = z^2-1.
    g_mu = -w * adv * rho * (x[0] - mu) / sigma**2 * scale
    g_s = -w * adv * rho * (z**2 - 1.0) * scale
    if not passes:
        g_mu, g_s = 0 * g_mu, 0 * g_s
    np.testing.assert_allclose(grads.mu, g_mu, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grads.sigma_raw, g_s, rtol=1e-4, atol=1e-7)


def test_reinforce_gradient_equals_ratio_gradient_at_rho_one():
    mu = np.array([[[0.3, -0.2]]], np.float32)
    sigma = np.array([[[1.2, 0.8]]], np.float32)
    x = jnp.array([[[[1.0, 0.5]]], [[[0.1, -0.4]]]])
    params = _params(mu, sigma)
    adv = jnp.array([0.7, -1.1])
    mask = jnp.array([True, True])
    logp = log_prob_fn(params, x, sigma_param="log")
    kw = dict(KW, use_rca=False, logprob_reduce="sum", clip_mode="ppo_min", reward_weight=1.0)
    g_pg = jax.grad(lambda p: policy_loss_fn(p, x, logp, adv, mask, **kw)[0])(params)
    kw["use_rca"] = True
    g_rca = jax.grad(lambda p: policy_loss_fn(p, x, logp, adv, mask, **kw)[0])(params)
    np.testing.assert_allclose(g_pg.mu, g_rca.mu, rtol=1e-5)
    np.testing.assert_allclose(g_pg.sigma_raw, g_rca.sigma_raw, rtol=1e-5)


def test_mask_excludes_samples():
    params = _params(np.zeros((1, 1, 2), np.float32), np.ones((1, 1, 2), np.float32))
    x = jnp.array([[[[1.0, 0.5]]], [[[9.0, 9.0]]]])
    logp = log_prob_fn(params, x, sigma_param="log")
    kw = dict(KW, logprob_reduce="sum", clip_mode="ppo_min", reward_weight=1.0)
    loss_masked, _ = policy_loss_fn(params, x, logp, jnp.array([2.0, 1e6]), jnp.array([True, False]), **kw)
    loss_single, _ = policy_loss_fn(params, x[:1], logp[:1], jnp.array([2.0]), jnp.array([True]), **kw)
    np.testing.assert_allclose(loss_masked, loss_single)
    np.testing.assert_allclose(loss_single, -2.0)


def _torch_reference_loss(mu, sigma, x, adv, eps, kl_weight, reward_weight):
    """The public PyTorch code's loss, written out in numpy: mean log-prob, reference N(0, I), plain clamp,
    L2 prior term."""
    logp = np.mean(-0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi))
    logp0 = np.mean(-0.5 * x**2 - 0.5 * np.log(2 * np.pi))
    rho = np.exp(logp - logp0)
    return -reward_weight * adv * np.clip(rho, 1 - eps, 1 + eps) + kl_weight * np.mean((mu - 0) ** 2 + (sigma - 1) ** 2)


def test_official_preset_loss_equals_public_code_formula():
    cfg = get_preset("official")
    rng = np.random.default_rng(0)
    mu = rng.normal(scale=0.1, size=(2, 3, 3)).astype(np.float32)
    sigma = rng.uniform(0.9, 1.1, size=(2, 3, 3)).astype(np.float32)
    x = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
    adv = 0.37
    params = PolicyParams(mu=jnp.asarray(mu), sigma_raw=jnp.asarray(sigma))  # clamp: raw == sigma
    loss, aux = policy_loss_fn(
        params,
        jnp.asarray(x),
        prior_log_prob(jnp.asarray(x), reduce="mean"),
        jnp.array([adv]),
        jnp.array([True]),
        sigma_param=cfg.sigma_param,
        sigma_min=cfg.sigma_min,
        logprob_reduce=cfg.logprob_reduce,
        use_rca=cfg.use_rca,
        clip_eps=cfg.clip_eps,
        clip_mode=cfg.clip_mode,
        kl_weight=cfg.kl_weight,
        reward_weight=cfg.reward_weight,
        max_log_ratio=cfg.max_log_ratio,
    )
    ref = _torch_reference_loss(mu, sigma, x[0], adv, 0.2, 0.01, 10.0)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(aux["prior"], np.mean(mu**2 + (sigma - 1) ** 2), rtol=1e-5)


def test_official_update_uses_public_formula_with_current_reward():
    # The whole update of the official preset: A = r - V_phi(mu, sigma, e) with *this* sample's reward
    # (the public code's stale-reward bug is not reproduced), reference N(0, I), loss as above.
    cfg = get_preset("official", drcm_hidden=(8, 8, 8))
    shape = (2, 3, 3)
    state = init_state(cfg, shape, embed_dim=4)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, *shape)).astype(np.float32)
    reward = 0.8
    batch = Batch(x=jnp.asarray(x), reward=jnp.array([reward]), valid=jnp.array([True]), prompt_embedding=jnp.ones(4))
    _, m = jax.jit(make_update_fn(cfg))(state, batch)
    adv = reward - float(m["drcm/pred"])
    ref = _torch_reference_loss(np.zeros(shape), np.ones(shape), x[0], adv, 0.2, 0.01, 10.0)
    np.testing.assert_allclose(m["policy/loss"], ref, rtol=1e-5)
    np.testing.assert_allclose(m["adv/mean"], adv, rtol=1e-5)


def test_prior_penalty_zero_at_prior():
    np.testing.assert_allclose(prior_penalty(jnp.zeros(3), jnp.ones(3)), 0.0)
    np.testing.assert_allclose(prior_penalty(jnp.ones(2), jnp.full(2, 3.0)), 1.0 + 4.0)

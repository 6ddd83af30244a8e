"""find_jax.envs.image.fast_norm: the GroupNorm rewrite equals Flax's GroupNorm, runs only where it applies, and leaves
the sampler's images unchanged."""

from __future__ import annotations

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from find_jax.envs.image import fast_norm
from find_jax.envs.image.fast_norm import fast_group_norm


def _perturbed(module: nn.Module, x: jax.Array):
    """Init, then move scale and bias away from 1 and 0 so both enter the comparison."""
    variables = module.init(jax.random.PRNGKey(1), x)
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    leaves = [a + 0.3 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _apply_both(module: nn.Module, x: jax.Array):
    variables = _perturbed(module, x)
    reference = module.apply(variables, x)
    with mock.patch.object(fast_norm, "group_norm", wraps=fast_norm.group_norm) as spy, fast_group_norm():
        out = module.apply(variables, x)
    return reference, out, spy.call_count


@pytest.mark.parametrize(
    "shape, groups",
    [
        ((2, 8, 8, 32), 32),  # one channel per group
        ((2, 4, 4, 64), 32),  # two (the UNet's wider layers)
        ((3, 4, 6, 96), 32),  # three, non-square
        ((2, 16, 64), 8),  # [B, tokens, C]: eight channels per group
    ],
)
def test_matches_flax_group_norm_in_float32(shape, groups):
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), shape) + 1.5  # a mean away from 0 tests E[x^2] - mu^2
    reference, out, calls = _apply_both(nn.GroupNorm(num_groups=groups, epsilon=1e-5), x)
    assert calls == 1
    assert out.dtype == reference.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("module_dtype", [None, jnp.bfloat16])
def test_bfloat16_inputs_keep_flax_output_dtype(module_dtype):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 64)).astype(jnp.bfloat16)
    reference, out, calls = _apply_both(nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=module_dtype), x)
    assert calls == 1
    assert out.dtype == reference.dtype  # float32 (bf16 x with float32 params) or the module's bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(reference, np.float32), atol=0.05)


@pytest.mark.parametrize(
    "module",
    [
        nn.GroupNorm(num_groups=None, group_size=2),
        nn.GroupNorm(num_groups=32, use_bias=False),
        nn.GroupNorm(num_groups=32, use_scale=False),
        nn.GroupNorm(num_groups=32, use_fast_variance=False),
        nn.GroupNorm(num_groups=32, reduction_axes=(2, 3)),
    ],
    ids=["group_size", "no_bias", "no_scale", "exact_variance", "reduction_axes"],
)
def test_other_configurations_run_flax_unchanged(module):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 64))
    reference, out, calls = _apply_both(module, x)
    assert calls == 0
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reference))


def test_masked_calls_and_other_modules_run_flax_unchanged():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 64))
    mask = jnp.ones_like(x, dtype=bool).at[:, 0].set(False)
    gn = nn.GroupNorm(num_groups=32)
    variables = _perturbed(gn, x)
    with mock.patch.object(fast_norm, "group_norm", wraps=fast_norm.group_norm) as spy, fast_group_norm():
        out = gn.apply(variables, x, mask=mask)
        dense = nn.Dense(8)
        dense_out = dense.apply(dense.init(jax.random.PRNGKey(0), x), x)
    assert spy.call_count == 0 and dense_out.shape == (2, 4, 4, 8)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(gn.apply(variables, x, mask=mask)))


def test_disabled_context_runs_flax():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 64))
    gn = nn.GroupNorm(num_groups=32)
    variables = _perturbed(gn, x)
    with mock.patch.object(fast_norm, "group_norm", wraps=fast_norm.group_norm) as spy, fast_group_norm(False):
        gn.apply(variables, x)
    assert spy.call_count == 0


def test_group_norm_rejects_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="does not divide the 30 channels"):
        fast_norm.group_norm(jnp.zeros((1, 2, 2, 30)), jnp.ones(30), jnp.zeros(30), 32, 1e-5)


def test_sampler_images_equal_with_and_without_the_rewrite(tiny_model):
    """Every GroupNorm of the tiny SD UNet and VAE goes through the rewrite; images agree to float32 rounding."""
    from find_jax.envs.image.sampler import make_sampler
    from find_jax.envs.text import encode_prompts

    cond = encode_prompts(tiny_model, ["a red cat", "a blue dog"])
    uncond = encode_prompts(tiny_model, ["", ""], allow_empty=True)
    latents = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8))
    images = {}
    for fast in (False, True):
        fn = make_sampler(tiny_model, steps=4, guidance=7.5, fast_norm=fast)
        with mock.patch.object(fast_norm, "group_norm", wraps=fast_norm.group_norm) as spy:
            keys = jax.numpy.stack([jax.random.PRNGKey(0)] * 2)
            images[fast] = np.asarray(fn(tiny_model.params, latents, cond, uncond, keys))
        assert (spy.call_count > 0) == fast  # counted while tracing
    np.testing.assert_allclose(images[True], images[False], atol=1e-5)

"""Query-chunked attention (``layers.attend(..., query_chunk=n)``) equals the plain one, in the layer and in the
tiny UNet3D, and bounds the score tensor's size in the compiled program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from find_jax.envs.video.layers import attend

torch = pytest.importorskip("torch")

from find_jax.envs.video.loading import load_unet3d  # noqa: E402
from find_jax.envs.video.testing import make_tiny_video_unet  # noqa: E402


def _qkv(seed, n=2, t=37, s=37, h=3, d=8):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (
        jax.random.normal(k1, (n, t, h, d)),
        jax.random.normal(k2, (n, s, h, d)),
        jax.random.normal(k3, (n, s, h, d)),
    )


@pytest.mark.parametrize("chunk", [1, 5, 16, 36, 37, 100])  # 37 queries: padded last chunks, exact fits, >= T
def test_attend_chunked_equals_plain(chunk):
    q, k, v = _qkv(0)
    plain = attend(q, k, v)
    chunked = jax.jit(lambda q, k, v: attend(q, k, v, query_chunk=chunk))(q, k, v)
    assert chunked.shape == plain.shape == (2, 37, 3, 8)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(plain), atol=1e-5, rtol=0)
    # against softmax written out, so "equal to the plain call" is not two copies of one mistake
    scores = jnp.einsum("nthd,nshd->nhts", q, k) / np.sqrt(8)
    ref = jnp.einsum("nhts,nshd->nthd", jax.nn.softmax(scores, axis=-1), v)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(ref), atol=1e-5, rtol=0)


def test_attend_cross_attention_and_bad_chunk():
    q, k, v = _qkv(1, t=20, s=7)  # queries and keys of different lengths (text cross-attention)
    np.testing.assert_allclose(
        np.asarray(attend(q, k, v, query_chunk=6)), np.asarray(attend(q, k, v)), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="query_chunk must be >= 1"):
        attend(q, k, v, query_chunk=0)


def _largest_buffer(fn, *args) -> int:
    """Elements of the largest array in the optimised HLO of ``fn(*args)``."""
    import re

    hlo = jax.jit(fn).lower(*args).compile().as_text()
    sizes = [np.prod([int(x) for x in m.split(",") if x]) for m in re.findall(r"f32\[([\d,]+)\]", hlo)]
    return int(max(sizes))


def test_chunked_attention_never_holds_all_scores():
    q, k, v = _qkv(2, n=1, t=1024, s=1024, h=2, d=8)
    full = _largest_buffer(lambda q, k, v: attend(q, k, v), q, k, v)
    chunked = _largest_buffer(lambda q, k, v: attend(q, k, v, query_chunk=128), q, k, v)
    assert full >= 2 * 1024 * 1024  # the plain call holds [N, H, T, S]
    assert chunked <= 2 * 128 * 1024  # the chunked one at most [N, H, chunk, S]


@pytest.mark.parametrize("chunk", [7, 16])  # 8x8 and 4x4 latents: 64 and 16 queries per frame at the two levels
def test_tiny_unet3d_with_chunked_attention_equals_plain(tmp_path, chunk):
    make_tiny_video_unet(tmp_path, seed=0)
    model, params = load_unet3d(tmp_path)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 4, 3, 8, 8)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((2, 5, 32)), jnp.float32)
    t = jnp.asarray([10, 500])
    plain = jax.jit(model.apply)({"params": params}, x, t, ctx)
    chunked_model = model.clone(query_chunk=chunk)  # same params: the option is no parameter
    chunked = jax.jit(chunked_model.apply)({"params": params}, x, t, ctx)
    assert float(jnp.abs(plain).max()) > 1e-2  # the output is not trivially zero
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(plain), atol=1e-5, rtol=0)

"""Batched pooled prompt embeddings (the text-conditioned DRCM's condition in batch runs) equal the per-prompt ones."""

from __future__ import annotations

import numpy as np
import pytest

from find_jax.envs.text import pooled_embedding, pooled_embeddings

PROMPTS = ["a red cube", "two blue spheres on a table", "a cat", "a photo of a dog in the snow", "green"]


@pytest.mark.parametrize("chunk", [64, 2])  # one call for all prompts; chunks of 2 with the last one padded
def test_batched_pooled_embeddings_equal_per_prompt(tiny_model, chunk):
    single = np.stack([pooled_embedding(tiny_model, p) for p in PROMPTS])
    batched = pooled_embeddings(tiny_model, PROMPTS, chunk=chunk)
    assert batched.shape == single.shape == (len(PROMPTS), single.shape[1]) and batched.dtype == np.float32
    assert np.abs(single[0] - single[1]).max() > 1e-3  # the rows differ: a mixed-up order would be caught
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_batched_pooled_embeddings_refuse_bad_input(tiny_model):
    with pytest.raises(ValueError, match="chunk"):
        pooled_embeddings(tiny_model, PROMPTS, chunk=0)
    with pytest.raises(ValueError, match="empty"):
        pooled_embeddings(tiny_model, ["a cat", " "])


def test_run_batch_conditions_each_prompt_on_its_batched_embedding(tiny_model, tmp_path):
    from find_jax import optimize, rundir
    from find_jax.config import get_preset
    from find_jax.prompts import PromptItem

    texts = PROMPTS[:3]
    cfg = get_preset(
        "tiny", drcm_text_conditioned=True, reward="brightness", drcm_hidden=(8, 8, 8), iterations=1,
        checkpoint_every=1, samples_per_iter=2, replay_size=2, num_final_samples=1,
    )  # fmt: skip
    result = optimize.run_batch(cfg, [PromptItem(t) for t in texts], tmp_path / "wd", batch_prompts=2, model=tiny_model)
    assert [r.status for r in result.results] == ["done"] * 3
    expected = pooled_embeddings(tiny_model, texts)
    for r, emb in zip(result.results, expected, strict=True):
        _, record = rundir.read_run(tmp_path / "wd" / r.dir)
        assert record["embed_dim"] == emb.size
        assert record["prompt_embedding_hash"] == rundir.array_hash(emb)

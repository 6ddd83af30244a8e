"""CLIP score in JAX vs transformers' PyTorch CLIPModel with the same tiny random weights."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reward_fixtures import WORDS, random_images, write_tiny_clip

from reward_models import make_reward
from reward_models.bridge import clip_preprocess, read_preprocess_config
from reward_models.clip_score import load_clip_tokenizer, preprocess_jax

torch.set_num_threads(1)

PROMPTS = ["a photo of a red cat", "a green dog", "a blue circle on the left"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_clip")
    write_tiny_clip(d, seed=0)
    return d


@pytest.fixture(scope="module")
def clip_reward(clip_dir):
    return make_reward("clip_score", path=str(clip_dir))


def _torch_clip_score(clip_dir, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """The reference: transformers' CLIPModel + CLIPImageProcessor (PIL) + the CLIP tokenizer, in torch."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(
        images=list(np.round(images * 255).astype(np.uint8)), return_tensors="pt"
    ).pixel_values
    tok = load_clip_tokenizer(clip_dir)
    enc = tok(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pixels)
    return (100.0 * (out.image_embeds * out.text_embeds).sum(-1)).numpy()


def test_matches_torch_clip(clip_dir, clip_reward):
    images = random_images(0, 3, 30)  # model size and 8-bit values: the PIL processor is exact here
    got = clip_reward(jnp.asarray(images), PROMPTS)
    want = _torch_clip_score(clip_dir, images, PROMPTS)
    assert got.shape == (3,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3)  # x100 scale: cosines agree to 1e-5
    assert np.ptp(got) > 1.0  # the scores really depend on image and prompt


def test_prompt_changes_score_and_scale_one_is_the_raw_cosine(clip_dir, clip_reward):
    images = jnp.asarray(random_images(1, 2, 30))
    a = clip_reward(images, ["a red cat", "a red cat"])
    b = clip_reward(images, ["a blue square", "a blue square"])
    assert not np.allclose(a, b)
    raw = make_reward("clip_score", path=str(clip_dir), scale=1.0)(images, ["a red cat", "a red cat"])
    np.testing.assert_allclose(raw * 100.0, a, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(raw) <= 1.0)


def test_resized_images_match_the_pil_processor(clip_dir):
    from transformers import CLIPImageProcessor

    images = np.stack([np.broadcast_to(np.linspace(0, 1, 64)[None, :, None], (64, 64, 3))] * 2).astype(np.float32)
    images[1] = images[1] ** 2
    images = np.round(images * 255) / 255
    cfg = read_preprocess_config(clip_dir, clip_preprocess(224))
    got = np.asarray(preprocess_jax(jnp.asarray(images), cfg))
    want = CLIPImageProcessor.from_pretrained(clip_dir)(
        images=list(np.round(images * 255).astype(np.uint8)), return_tensors="np"
    ).pixel_values
    assert got.shape == want.shape == (2, 3, 30, 30)
    np.testing.assert_allclose(got, want, atol=1.5 / 255 / 0.26)  # about one grey level (PIL is 8-bit)


def test_no_recompile_across_prompts(clip_reward):
    images = jnp.asarray(random_images(2, 3, 30))
    clip_reward(images, PROMPTS)
    n = clip_reward.inner.cosine_fn._cache_size()
    clip_reward(images, ["a dog", "a cat", "the left square"])
    clip_reward(images * 0.5, PROMPTS[::-1])
    assert clip_reward.inner.cosine_fn._cache_size() == n


def test_long_prompt_warns_and_truncates(clip_reward):
    images = jnp.asarray(random_images(3, 1, 30))
    long = " ".join(WORDS + WORDS)  # 28 one-token words; the tiny text encoder holds 16 tokens
    with pytest.warns(UserWarning, match="exceed 16 tokens and are truncated"):
        got = clip_reward(images, [long])
    cut = " ".join((WORDS + WORDS)[:14])  # 16 = start + 14 words + end
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = clip_reward(images, [cut])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_flax_weights_load_the_same(clip_dir, clip_reward, tmp_path):
    from reward_fixtures import write_clip_tokenizer, write_preprocessor_config

    model, params = clip_reward.inner.model, clip_reward.inner.params
    model.save_pretrained(tmp_path, params=params)
    write_clip_tokenizer(tmp_path)
    write_preprocessor_config(tmp_path, 30)
    assert (tmp_path / "flax_model.msgpack").is_file()
    images = jnp.asarray(random_images(4, 2, 30))
    flax_reward = make_reward("clip_score", path=str(tmp_path))
    np.testing.assert_allclose(flax_reward(images, PROMPTS[:2]), clip_reward(images, PROMPTS[:2]), rtol=1e-6)


def test_partial_checkpoint_is_refused(clip_dir, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    for f in clip_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    state = load_file(clip_dir / "model.safetensors")
    state.pop("visual_projection.weight")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 1 CLIP params.*visual_projection"):
        make_reward("clip_score", path=str(tmp_path))


def test_bad_dtype_option(clip_dir):
    with pytest.raises(ValueError, match="dtype"):
        make_reward("clip_score", path=str(clip_dir), dtype="float64")


def test_fixture_tokenizer_has_one_token_per_word(clip_dir):
    tok = load_clip_tokenizer(clip_dir)
    ids = tok(" ".join(WORDS)).input_ids
    assert len(ids) == len(WORDS) + 2  # start + one per word + end
    assert ids[-1] == max(tok.get_vocab().values())  # end-of-text has the highest id (CLIP pools there)

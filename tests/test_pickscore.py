"""PickScore vs the original recipe (transformers CLIPModel + CLIPProcessor) on tiny random weights."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reward_fixtures import random_images, write_clip_tokenizer, write_preprocessor_config, write_tiny_clip

from reward_models import make_reward
from reward_models.weights import MissingWeightsError

torch.set_num_threads(1)

PROMPTS = ["a photo of a red cat", "a green dog", "a blue circle on the left"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(model dir without tokenizer, processor dir) like yuvalkirstain/PickScore_v1 + laion CLIP-H."""
    model_dir = tmp_path_factory.mktemp("pickscore_model")
    proc_dir = tmp_path_factory.mktemp("pickscore_processor")
    write_tiny_clip(model_dir, seed=3, logit_scale=math.log(100.0), tokenizer=False, preprocessor=False)
    write_clip_tokenizer(proc_dir)
    write_preprocessor_config(proc_dir, 30)
    return model_dir, proc_dir


def _original(model_dir, proc_dir, images: np.ndarray, prompt: str) -> np.ndarray:
    """The PickScore README's calc_probs before the softmax: one prompt against several images."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from reward_models.clip_score import load_clip_tokenizer

    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(proc_dir), tokenizer=load_clip_tokenizer(proc_dir)
    )
    model = CLIPModel.from_pretrained(model_dir).eval()
    image_inputs = processor(images=list(np.round(images * 255).astype(np.uint8)), return_tensors="pt")
    text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        image_embs = model.get_image_features(**image_inputs)
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs)
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
    return scores.numpy()


@pytest.fixture(scope="module")
def pickscore(dirs):
    model_dir, proc_dir = dirs
    return make_reward("pickscore", path=str(model_dir), processor_path=str(proc_dir))


def test_matches_the_original_recipe(dirs, pickscore):
    images = random_images(0, 3, 30)
    for prompt in PROMPTS:
        got = pickscore(jnp.asarray(images), [prompt] * 3)
        want = _original(*dirs, images, prompt)
        assert got.shape == (3,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_each_image_scored_with_its_own_prompt(dirs, pickscore):
    images = random_images(1, 3, 30)
    got = pickscore(jnp.asarray(images), PROMPTS)
    diag = [_original(*dirs, images[i : i + 1], p)[0] for i, p in enumerate(PROMPTS)]
    np.testing.assert_allclose(got, diag, rtol=1e-5, atol=1e-4)
    assert np.all(np.abs(got) <= 100.0 + 1e-3)  # exp(logit_scale) x cosine


def test_processor_found_in_the_model_dir(dirs, tmp_path):
    model_dir, _ = dirs
    write_tiny_clip(tmp_path, seed=3, logit_scale=math.log(100.0))  # same weights, tokenizer beside them
    images = jnp.asarray(random_images(2, 2, 30))
    a = make_reward("pickscore", path=str(tmp_path))(images, PROMPTS[:2])
    b = make_reward("pickscore", path=str(model_dir), processor_path=str(tmp_path))(images, PROMPTS[:2])
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_missing_processor_names_its_files(dirs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    model_dir, _ = dirs
    with pytest.raises(MissingWeightsError) as err:
        make_reward("pickscore", path=str(model_dir))
    msg = str(err.value)
    for part in ("vocab.json", "merges.txt", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "processor_path=DIR"):
        assert part in msg

"""Video metrics (Tab. 5): CLIP frame consistency, image rewards as means over frames, frame strips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reward_fixtures import write_clip_tokenizer, write_preprocessor_config, write_tiny_clip

from reward_models import make_reward, spec
from reward_models.registry import mean_over_frames
from reward_models.video_metrics import TAB5_METRICS, frame_strip, pairwise_consistency, video_metric_fns

torch.set_num_threads(1)

VICLIP = Path(__file__).parent / "fixtures" / "viclip_tiny"


def smooth_video(seed: int, t: int, h: int, w: int) -> np.ndarray:
    """``[T, H, W, 3]`` float32 multiples of 1/255: a moving smooth pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.stack(
        [
            np.stack(
                [0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + yy + 0.1 * k + c)) for c in range(3)], -1
            )
            for k in range(t)
        ]
    )
    return (np.round(out * 255) / 255).astype(np.float32)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip_l14")
    write_tiny_clip(d, seed=4, image_size=30)
    return d


@pytest.fixture(scope="module")
def consistency(clip_dir):
    return make_reward("frame_consistency", path=str(clip_dir))


def _by_hand(clip_dir, video: np.ndarray) -> float:
    """LOVEU-TGVE's recipe on the original stack: CLIPImageProcessor on 8-bit frames, torch CLIPModel."""
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(
        images=list(np.round(video * 255).astype(np.uint8)), return_tensors="pt"
    ).pixel_values
    with torch.no_grad():
        e = model.get_image_features(pixel_values=pixels)
    e = (e / e.norm(dim=-1, keepdim=True)).numpy().astype(np.float64)
    t = len(e)
    return float(sum(e[i] @ e[j] for i in range(t) for j in range(t) if i != j) / (t * (t - 1)))


def test_frame_consistency_matches_the_original_recipe(clip_dir, consistency):
    """Frames of 48x40 (resized to 30 by PIL's bicubic, exactly) and of the model size."""
    videos = [smooth_video(0, 6, 48, 40), smooth_video(1, 6, 48, 40)]
    got = consistency(jnp.asarray(np.stack(videos)), ["ignored", "ignored"])
    want = [_by_hand(clip_dir, v) for v in videos]
    assert got.shape == (2,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    at_size = smooth_video(2, 4, 30, 30)
    np.testing.assert_allclose(consistency(at_size[None], ["x"]), [_by_hand(clip_dir, at_size)], atol=1e-5)


def test_frame_consistency_extremes(consistency):
    frame = smooth_video(3, 1, 30, 30)
    still = np.repeat(frame, 5, axis=0)[None]  # five identical frames
    np.testing.assert_allclose(consistency(still, ["a"]), [1.0], atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 frames"):
        consistency(frame[None], ["a"])
    assert spec("frame_consistency").video


def test_pairwise_consistency_by_hand():
    e = np.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])  # cosines: (1,2) 0, (1,3) and (2,3) 1/sqrt(2)
    np.testing.assert_allclose(pairwise_consistency(jnp.asarray(e)), [(4 / math.sqrt(2)) / 6], rtol=1e-6)
    opposite = np.array([[[1.0, 0.0], [-1.0, 0.0]]])
    np.testing.assert_allclose(pairwise_consistency(jnp.asarray(opposite)), [-1.0], rtol=1e-6)


def test_image_rewards_score_videos_as_the_mean_over_frames():
    rng = np.random.default_rng(0)
    videos = rng.random((2, 5, 8, 8, 3)).astype(np.float32)
    brightness = make_reward("brightness")
    got = brightness(jnp.asarray(videos), ["a", "b"])
    want = [np.mean(brightness(v, ["p"] * 5)) for v in videos]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        brightness(videos, ["a"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brightness(videos + 1.0, ["a", "b"])


def test_mean_over_frames_passes_each_videos_prompt():
    seen = []

    def fake(images, prompts):
        seen.append((tuple(images.shape), list(prompts)))
        return np.arange(len(prompts), dtype=np.float32)

    out = mean_over_frames(fake, np.zeros((2, 3, 4, 4, 3), np.float32), ["x", "y"])
    assert seen == [((6, 4, 4, 3), ["x", "x", "x", "y", "y", "y"])]
    np.testing.assert_allclose(out, [1.0, 4.0])
    seen.clear()  # at most 7 frames a call: whole videos of 3 frames, two at a time
    out = mean_over_frames(fake, np.zeros((5, 3, 4, 4, 3), np.float32), list("abcde"), max_frames=7)
    assert [s[0][0] for s in seen] == [6, 6, 3] and seen[2][1] == ["e"] * 3
    np.testing.assert_allclose(out, [1.0, 4.0, 1.0, 4.0, 1.0])


def test_pickscore_over_frames_and_the_tab5_set(tmp_path, clip_dir):
    model_dir, proc_dir = tmp_path / "pick", tmp_path / "proc"
    write_tiny_clip(model_dir, seed=3, logit_scale=math.log(100.0), tokenizer=False, preprocessor=False)
    write_clip_tokenizer(proc_dir)
    write_preprocessor_config(proc_dir, 30)
    config = json.loads((VICLIP / "golden.json").read_text())["config"]
    fns = video_metric_fns(
        {
            "viclip": {"path": VICLIP, "tokenizer_path": VICLIP, "config": config, "device": "cpu"},
            "frame_consistency": {"path": str(clip_dir)},
            "pickscore": {"path": str(model_dir), "processor_path": str(proc_dir)},
        }
    )
    assert tuple(fns) == TAB5_METRICS
    videos = np.stack([smooth_video(5, 16, 32, 32), smooth_video(6, 16, 32, 32)])  # ModelScope-like: 16 frames
    prompts = ["a green dog", "a red cat"]
    scores = {name: fn(jnp.asarray(videos), prompts) for name, fn in fns.items()}
    assert all(s.shape == (2,) and np.all(np.isfinite(s)) for s in scores.values())
    per_frame = [fns["pickscore"](v, [p] * 16) for v, p in zip(videos, prompts, strict=True)]
    np.testing.assert_allclose(scores["pickscore"], [np.mean(s) for s in per_frame], rtol=1e-5)
    with pytest.raises(ValueError, match="not among the metrics"):
        video_metric_fns({"imagereward": {}})


def test_frame_strip():
    v = np.zeros((2, 16, 4, 5, 3), np.float32)
    v[:, :, :, :, 0] = np.arange(16)[None, :, None, None] / 15
    strip = frame_strip(v, frames=4)
    assert strip.shape == (2, 4, 20, 3)
    np.testing.assert_allclose(strip[0, 0, ::5, 0], np.array([0, 5, 10, 15]) / 15)  # frames 0, 5, 10, 15
    assert frame_strip(v[:, :2], frames=8).shape == (2, 4, 10, 3)
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        frame_strip(v[0])

"""FIND end to end on a tiny random text-to-video model: the generic loop on ``[C, F, h, w]`` latents with an
image reward scored as the mean over frames, and an interrupted run resumed to the same result bit for bit."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

pytest.importorskip("torch")

from find_jax import loop  # noqa: E402
from find_jax.envs import load_model  # noqa: E402
from find_jax.envs.video.testing import make_tiny_video_model  # noqa: E402
from find_jax.optimize import make_config, run  # noqa: E402
from find_jax.rundir import load_state  # noqa: E402

FRAMES = 4  # the tiny model's own frame count (model_index.json "num_frames")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = make_tiny_video_model(tmp_path_factory.mktemp("tiny_video_opt"), seed=1)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "num_frames": FRAMES}))
    config = make_config("tiny", model=str(folder), reward="brightness", prompt="a red cat", iterations=4)
    return config, load_model(folder)


def test_optimize_on_video_and_resume_bit_for_bit(setup, tmp_path):
    config, model = setup
    full = run(config, tmp_path / "full", model=model)
    assert np.asarray(full.policy.mu).shape == (4, FRAMES, 8, 8)
    videos = np.load(tmp_path / "full" / "final_samples.npy")
    assert videos.shape == (config.num_final_samples, FRAMES, 16, 16, 3)
    rewards = np.load(tmp_path / "full" / "final_rewards.npy")
    luma = videos @ np.array([0.299, 0.587, 0.114], np.float32)  # [N, F, H, W]: Rec. 601, as the reward
    np.testing.assert_allclose(rewards, luma.mean(axis=(1, 2, 3)), atol=1e-5)  # image reward: mean over frames
    asked = []
    with pytest.raises(loop.Interrupted):
        run(config, tmp_path / "cut", model=model, should_stop=lambda: asked.append(1) or len(asked) == 2)
    assert int(load_state(tmp_path / "cut").step) == 2
    resumed = run(config, tmp_path / "cut", model=model)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.load(tmp_path / "cut" / "final_samples.npy"), videos)


def test_find_jax_sample_writes_videos(setup, tmp_path):
    from PIL import Image

    from find_jax.cli import main

    config, _ = setup
    out = tmp_path / "s"
    args = ["sample", "--model", config.model, "--prompt", "a cat", "--out", str(out), "--num-images", "2"]
    assert main([*args, "--steps", "2"]) == 0
    videos, latents = np.load(out / "videos.npy"), np.load(out / "latents.npy")
    assert videos.shape == (2, FRAMES, 16, 16, 3) and latents.shape == (2, 4, FRAMES, 8, 8)
    assert not (out / "images.npy").exists()
    gif = Image.open(out / "video_001.gif")
    assert gif.n_frames == FRAMES and gif.size == (16, 16)
    strip = np.asarray(Image.open(out / "video_001.png"))
    np.testing.assert_array_equal(strip[:, 16:32], np.round(videos[1, 1] * 255).astype(np.uint8))


def test_evaluate_export_and_sample_from_a_video_run(setup, tmp_path):
    """The wiring never branches on the kind: evaluate (Tab. 5-style table, frame-strip grids), export and
    sample --workdir work on a video run; the run report draws frame strips."""
    import torch
    from PIL import Image

    from find_jax.cli import main

    config, model = setup
    wd = tmp_path / "run"
    run(config, wd, model=model)
    from find_jax.report import write_run_report

    write_run_report(wd)
    strip = np.asarray(Image.open(wd / "final_samples.png"))
    assert strip.shape[1] > strip.shape[0]  # one frame strip a row: wider than tall
    out = tmp_path / "eval"
    args = ["evaluate", "--workdir", str(wd), "--reward", "brightness", "--num-images", "2", "--out", str(out)]
    assert main([*args, "--quiet", "--cache-dir", "off"]) == 0
    report = json.loads((out / "eval.json").read_text())
    (row,) = report["prompts"]
    assert len(row["rewards"]["brightness"]["base_scores"]) == 2 and (out / "eval.md").is_file()
    assert any(out.glob("grids/*.png"))
    assert main(["export", "--workdir", str(wd), "--format", "pt", "--out", str(tmp_path / "d.pt")]) == 0
    exported = torch.load(tmp_path / "d.pt")
    assert tuple(exported["mean"].shape) == (1, 4, FRAMES, 8, 8)
    s = tmp_path / "s"
    assert main(["sample", "--workdir", str(wd), "--num-images", "2", "--out", str(s), "--cache-dir", "off"]) == 0
    assert np.load(s / "videos.npy").shape == (2, FRAMES, 16, 16, 3)
    assert np.load(s / "latents.npy").shape == (2, 4, FRAMES, 8, 8)

"""`find-jax sample` end to end on the tiny random model: files written, flags honoured, bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from find_jax.cli import build_parser, main


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--model",
        "--prompt",
        "--negative-prompt",
        "--num-images",
        "--seed",
        "--latents",
        "--steps",
        "--guidance",
        "--eta",
        "--height",
        "--width",
        "--out",
        "--dtype",
        "--cache-dir",
        "--workdir",
    ):
        assert flag in text


def test_sample_writes_images_latents_and_pngs(tiny_sd_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        "sample",
        "--model",
        str(tiny_sd_dir),
        "--prompt",
        "a red cat",
        "--num-images",
        "3",
        "--steps",
        "5",
        "--seed",
        "7",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--cache-dir",
        "off",
    ]
    assert main(args) == 0
    images = np.load(out / "images.npy")
    latents = np.load(out / "latents.npy")
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert latents.shape == (3, 4, 8, 8)
    pngs = sorted(out.glob("image_*.png"))
    assert len(pngs) == 3
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[1])), np.round(images[1] * 255).astype(np.uint8))
    meta = json.loads((out / "sample.json").read_text())
    assert meta["seed"] == 7 and meta["steps"] == 5

    # The same latents given back through --latents reproduce the images exactly (eta = 0).
    out2 = tmp_path / "out2"
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_sd_dir),
                "--prompt",
                "a red cat",
                "--latents",
                str(out / "latents.npy"),
                "--steps",
                "5",
                "--out",
                str(out2),
                "--cache-dir",
                "off",
            ]
        )
        == 0
    )
    np.testing.assert_allclose(np.load(out2 / "images.npy"), images, atol=1e-5)
    np.testing.assert_array_equal(np.load(out2 / "latents.npy"), latents)

    # Existing output is never silently overwritten.
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0


def test_sample_bad_inputs(tiny_sd_dir, tmp_path, capsys):
    base = ["sample", "--model", str(tiny_sd_dir), "--steps", "2", "--cache-dir", "off"]
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 4, 4, 4), np.float32))
    assert main([*base, "--prompt", "x", "--latents", str(bad), "--out", str(tmp_path / "o1")]) == 2
    assert "[N, 4, 8, 8]" in capsys.readouterr().err
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((1, 4, 8, 8), np.nan, np.float32))
    assert main([*base, "--prompt", "x", "--latents", str(nan), "--out", str(tmp_path / "o2")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main([*base, "--prompt", "", "--out", str(tmp_path / "o3")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path / "o4")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert main([*base, "--prompt", "x", "--height", "15", "--out", str(tmp_path / "o5")]) == 2
    assert "multiples" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()

"""Loading a diffusers-format model offline: Flax, .safetensors and .bin weights; clear errors."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from find_jax.envs import ModelLoadError, load_model


def _max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_flax_safetensors_and_bin_weights_load_identically(tiny_sd_dir, tiny_sd_bin_dir):
    flax = load_model(tiny_sd_dir, weights="flax")
    safe = load_model(tiny_sd_dir, weights="pt")
    binw = load_model(tiny_sd_bin_dir, weights="pt")
    assert jax.tree.structure(flax.params) == jax.tree.structure(safe.params)
    assert _max_diff(flax.params, safe.params) == 0.0
    assert _max_diff(flax.params, binw.params) == 0.0
    assert flax.fingerprint == safe.fingerprint == binw.fingerprint
    assert flax.latent_shape() == (4, 8, 8)
    assert flax.default_size == (16, 16)
    # every component is really there and non-trivial
    n_unet = sum(x.size for x in jax.tree.leaves(flax.params["unet"]))
    assert n_unet > 100_000


def test_auto_prefers_flax_and_falls_back_to_pt(tiny_sd_bin_dir, tiny_sd_dir):
    assert load_model(tiny_sd_bin_dir).fingerprint == load_model(tiny_sd_dir).fingerprint


def test_bfloat16_params(tiny_sd_dir):
    m = load_model(tiny_sd_dir, dtype="bfloat16")
    assert {x.dtype.name for x in jax.tree.leaves(m.params)} == {"bfloat16"}


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path / "nope")):
        load_model(tmp_path / "nope")


@pytest.mark.parametrize(
    "remove, expect",
    [
        ("unet", "unet"),
        ("tokenizer/merges.txt", "merges.txt"),
        ("scheduler/scheduler_config.json", "scheduler_config.json"),
        ("model_index.json", "model_index.json"),
    ],
)
def test_missing_component_names_it(tiny_sd_dir, tmp_path, remove, expect):
    d = tmp_path / "m"
    shutil.copytree(tiny_sd_dir, d)
    target = d / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelLoadError, match=expect) as e:
        load_model(d)
    assert str(d) in str(e.value)


def test_missing_weights_lists_expected_files(tiny_sd_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_sd_dir, d)
    for f in (d / "vae").glob("diffusion_*"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="diffusion_pytorch_model.safetensors"):
        load_model(d)
    with pytest.raises(ModelLoadError, match=f"no weights in {d / 'vae'}"):
        load_model(d, weights="pt")


def test_weights_that_do_not_match_the_config_are_refused(tiny_sd_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_sd_dir, d)
    cfg = json.loads((d / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 48
    (d / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="shape|match"):
        load_model(d, weights="flax")


def test_hub_id_resolves_from_local_cache_only(tiny_sd_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-sd" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_sd_dir, snap)
    (cache / "models--someone--tiny-sd" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-sd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    m = load_model("someone/tiny-sd")
    assert m.fingerprint == load_model(tiny_sd_dir).fingerprint
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):
        load_model("someone/not-cached")

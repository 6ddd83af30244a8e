"""The reward contract: registry, input validation, output checks, and weight resolution/missing weights."""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from reward_models import available, make_reward, register, spec, validate_inputs
from reward_models import registry as registry_mod
from reward_models.weights import (
    MissingWeightsError,
    find_in_hub_cache,
    resolve_weights,
    transformers_files,
    weight_file,
)

MINE = {"aesthetic", "brightness", "clip_score", "color", "jpeg_compressibility", "jpeg_incompressibility", "pickscore"}


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Points the Hugging Face hub cache at an empty directory (so real caches cannot leak in)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def temp_reward():
    """Registers rewards for one test and removes them afterwards."""
    names: list[str] = []

    def add(name, fn, **kw):
        register(name, description="test", **kw)(lambda: fn)
        names.append(name)
        return make_reward(name)

    yield add
    for n in names:
        registry_mod._REGISTRY.pop(n, None)


def test_available_lists_the_builtin_rewards():
    names = available()
    assert names == sorted(names)
    assert MINE <= set(names)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown reward 'nope'; available rewards: .*clip_score.*jpeg_compressibility"
    ):
        make_reward("nope")


def test_specs_are_documented_and_weight_loaders_take_path():
    for name in available():
        s = spec(name)
        assert s.description and s.weights
        if s.weights != "none":  # every weight-loading factory has a `path` option (--reward-path)
            assert "path" in inspect.signature(s.factory).parameters, name


def test_registering_twice_is_refused(temp_reward):
    temp_reward("contract_dup", lambda images, prompts: np.zeros(len(prompts)))
    with pytest.raises(ValueError, match="registered twice"):
        register("contract_dup", description="again")(lambda: None)


def test_output_is_float32_numpy_of_batch_size(temp_reward):
    fn = temp_reward("contract_mean", lambda images, prompts: jnp.mean(images, axis=(1, 2, 3)))
    images = np.random.default_rng(0).random((3, 4, 4, 3), dtype=np.float32)
    out = fn(jnp.asarray(images), ["a", "b", "c"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3,)
    np.testing.assert_allclose(out, images.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert fn.reward_name == "contract_mean"


def test_wrong_output_shape_is_caught(temp_reward):
    fn = temp_reward("contract_bad_shape", lambda images, prompts: np.zeros((len(prompts), 2)))
    with pytest.raises(RuntimeError, match=r"returned shape \(2, 2\), expected \(2,\)"):
        fn(np.zeros((2, 4, 4, 3), np.float32), ["a", "b"])


GOOD = np.full((2, 4, 4, 3), 0.5, np.float32)


@pytest.mark.parametrize(
    "images, prompts, match",
    [
        (np.zeros((4, 4, 3), np.float32), ["a"], r"\[B, H, W, 3\]"),  # rank 3
        (np.zeros((2, 3, 4, 4), np.float32), ["a", "b"], "3 channels last"),  # channels first
        (np.zeros((2, 4, 4, 4), np.float32), ["a", "b"], "3 channels last"),  # RGBA
        (GOOD * 3, ["a", "b"], r"\[0, 1\]; got values in \[1.5, 1.5\]"),
        (GOOD - 1, ["a", "b"], r"must lie in \[0, 1\]"),
        (np.full((2, 4, 4, 3), np.nan, np.float32), ["a", "b"], r"must lie in \[0, 1\]"),
        (np.zeros((2, 4, 4, 3), np.uint8), ["a", "b"], "floats"),
        (np.zeros((0, 4, 4, 3), np.float32), ["a"], "1 prompts|0 images"),
        (GOOD, [], "prompt list is empty"),
        (GOOD, ["a"], "2 images but 1 prompts"),
        (GOOD, ["a", "b", "c"], "2 images but 3 prompts"),
        (GOOD, "ab", "not one string"),
        (GOOD, ["a", 3], "every prompt must be a string"),
    ],
)
def test_bad_inputs_are_clear_errors(images, prompts, match):
    with pytest.raises(ValueError, match=match):
        validate_inputs(images, prompts)
    with pytest.raises(ValueError, match=match):  # the same through a real reward
        make_reward("brightness")(images, prompts)


def test_jax_inputs_are_validated_on_device():
    validate_inputs(jnp.asarray(GOOD), ["a", "b"])
    validate_inputs(jnp.asarray(GOOD, jnp.bfloat16), ["a", "b"])
    with pytest.raises(ValueError, match=r"got values in \[0.5, 1.5\]"):
        validate_inputs(jnp.asarray(GOOD).at[0, 0, 0, 0].set(1.5), ["a", "b"])


def test_video_inputs_rank5(temp_reward):
    video = np.full((2, 8, 4, 4, 3), 0.25, np.float32)  # [B, T, H, W, 3]
    validate_inputs(video, ["a", "b"], video=True)
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        validate_inputs(GOOD, ["a", "b"], video=True)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        validate_inputs(video, ["a", "b"])
    fn = temp_reward("contract_video", lambda v, p: np.asarray(v).mean(axis=(1, 2, 3, 4)), video=True)
    np.testing.assert_allclose(fn(video, ["a", "b"]), [0.25, 0.25])
    assert spec("contract_video").video
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        fn(GOOD, ["a", "b"])


# ---- weights: local directories, the local hub cache, and the missing-weights error ----

FILES = (weight_file("config.json", source="SRC-A"), weight_file("w.safetensors", "w.bin", source="SRC-B"))


def test_resolve_local_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "w.bin").write_bytes(b"0")
    assert resolve_weights("thing", path=tmp_path, files=FILES) == tmp_path


def test_missing_file_error_names_each_file_and_source(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights("thing", path=tmp_path, files=FILES, hub_id="org/repo")
    msg = str(err.value)
    assert "config.json [found] (from SRC-A)" in msg
    assert "w.safetensors or w.bin [MISSING] (from SRC-B)" in msg
    assert "path=DIR" in msg and "--reward-path" in msg and "org/repo" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_nonexistent_path_and_file_path(tmp_path):
    with pytest.raises(MissingWeightsError, match="(?s)does not exist.*config.json"):
        resolve_weights("thing", path=tmp_path / "nope", files=FILES)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(MissingWeightsError, match="is a file"):
        resolve_weights("thing", path=f, files=FILES)


def _fake_snapshot(cache, repo, commit, files, ref=True):
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in files:
        (snap / name).write_text("x")
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
    return snap


def test_hub_cache_lookup_never_downloads(empty_hub_cache):
    snap = _fake_snapshot(empty_hub_cache, "org/model", "abc123", ["config.json", "w.safetensors"])
    assert resolve_weights("thing", path=None, files=FILES, hub_id="org/model") == snap
    assert resolve_weights("thing", path="org/model", files=FILES) == snap  # a hub id given as path
    # a snapshot without refs/main is still found
    other = _fake_snapshot(empty_hub_cache, "org/other", "def456", ["config.json", "w.bin"], ref=False)
    assert find_in_hub_cache("org/other", FILES) == other
    with pytest.raises(MissingWeightsError, match="'org/absent' is not in the local cache"):
        resolve_weights("thing", path=None, files=FILES, hub_id="org/absent")


def test_incomplete_hub_snapshot_reports_what_is_there(empty_hub_cache):
    _fake_snapshot(empty_hub_cache, "org/half", "aaa", ["config.json"])
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights("thing", path=None, files=FILES, hub_id="org/half")
    assert "config.json [found]" in str(err.value) and "[MISSING]" in str(err.value)


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("clip_score", {}, ["config.json", "flax_model.msgpack or model.safetensors", "vocab.json", "merges.txt"]),
        ("aesthetic", {}, ["sac+logos+ava1-l14-linearMSE.pth or aesthetic-model.pth", "improved-aesthetic-predictor"]),
        ("pickscore", {}, ["config.json", "model.safetensors or pytorch_model.bin", "yuvalkirstain/PickScore_v1"]),
    ],
)
def test_weight_rewards_without_weights_say_what_is_missing(empty_hub_cache, tmp_path, name, options, expected):
    with pytest.raises(MissingWeightsError) as err:
        make_reward(name, **options)
    for part in expected:
        assert part in str(err.value)
    with pytest.raises(MissingWeightsError, match="MISSING"):
        make_reward(name, path=str(tmp_path))


def test_aesthetic_reports_missing_clip_separately(empty_hub_cache, tmp_path):
    (tmp_path / "sac+logos+ava1-l14-linearMSE.pth").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match="(?s)CLIP ViT-L/14.*openai/clip-vit-large-patch14") as err:
        make_reward("aesthetic", path=str(tmp_path))
    assert "clip_path=DIR" in str(err.value)


def test_transformers_files_lists_alternatives():
    cfg, weights = transformers_files("org/x", flax=True)
    assert cfg.names == ("config.json",)
    assert weights.names == ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin")
    assert "https://huggingface.co/org/x" in weights.source

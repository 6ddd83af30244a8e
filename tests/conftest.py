"""Shared fixtures: tiny random SD-shaped models written offline (no network, no pretrained weights)."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A tiny SD-shaped model with the same weights as PyTorch .safetensors and Flax msgpack."""
    from find_jax.testing import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd"), seed=0, formats=("safetensors", "flax"))


@pytest.fixture(scope="session")
def tiny_sd_bin_dir(tmp_path_factory):
    """The same tiny model (same seed) with PyTorch .bin weights only."""
    from find_jax.testing import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd_bin"), seed=0, formats=("bin",))


@pytest.fixture(scope="session")
def tiny_model(tiny_sd_dir):
    """The tiny model loaded (float32, Flax weights)."""
    from find_jax.envs import load_model

    return load_model(tiny_sd_dir)

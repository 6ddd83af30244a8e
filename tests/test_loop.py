"""The one host loop: a single run is a prompt set of one, and the reward always sees the environment's device
arrays (the zero-copy bridge holds on both paths)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from find_jax import loop
from find_jax.config import get_preset
from find_jax.rundir import load_state
from find_jax.testing import FunctionEnvironment

SHAPE = (2, 4, 4)


def _env_fn(latents, rng):
    """A toy environment: the "image" is the latent's mean brightness, squashed to [0, 1] (no eta noise)."""
    v = jax.nn.sigmoid(latents.mean(axis=(1, 2, 3)))
    return jnp.broadcast_to(v[:, None, None, None], (latents.shape[0], 4, 4, 3))


def _reward(seen):
    def reward_fn(images, prompts):
        seen.append(type(images))
        return np.asarray(images).mean(axis=(1, 2, 3)).astype(np.float32)

    return reward_fn


def test_a_single_run_equals_a_prompt_set_of_one_and_both_hand_device_arrays_to_the_reward(tmp_path):
    config = get_preset("tiny", prompt="a red circle", iterations=5, num_final_samples=2)
    seen_single, seen_set = [], []
    single = loop.optimize_one(
        config, tmp_path / "single", env=FunctionEnvironment(_env_fn, SHAPE), reward_fn=_reward(seen_single)
    )
    run = loop.PromptRun(0, config.prompt, "", tmp_path / "set" / "000-a-red-circle", "000-a-red-circle")
    (tmp_path / "set").mkdir()
    result = loop.run_prompts(
        config, [run], tmp_path / "set", env=FunctionEnvironment(_env_fn, SHAPE), reward_fn=_reward(seen_set)
    )
    assert [r.status for r in result.results] == ["done"]
    in_set = load_state(run.run_dir)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(in_set), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # every iteration's reward call got the jax.Array the environment returned (final samples go as numpy)
    assert seen_single[:5] == seen_set[:5] and all(issubclass(t, jax.Array) for t in seen_single[:5])
    assert (run.run_dir / "status.json").is_file() and not (tmp_path / "single" / "status.json").exists()

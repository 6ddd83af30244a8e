"""The trainer against an abstract environment: an analytic bandit the policy must climb, both ablations,
no recompilation, exact resume, and the bad-input paths (NaN rewards, foreign workdirs); the config is
tests/test_config.py."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from find_jax import loop, trainer
from find_jax.config import (
    config_from_json,
    get_preset,
)
from find_jax.metrics import read_metrics
from find_jax.rundir import BadRewardError, RunDirError, load_state
from find_jax.testing import FunctionEnvironment
from find_jax.trainer import init_state, sample_from_state

SHAPE = (2, 4, 4)
D = int(np.prod(SHAPE))
TARGET = np.ones(SHAPE, np.float32)


def identity_env(x, rng):
    return x


def optimize(
    cfg,
    workdir,
    *,
    env_fn,
    reward_fn,
    latent_shape,
    prompt_embedding=None,
    model_id="test",
    weights_hash="",
    progress=None,
    should_stop=None,
):
    """One prompt through the loop on ``env_fn`` (per-prompt ``x [N, ...] -> media [N, ...]``)."""
    env = FunctionEnvironment(env_fn, latent_shape, source=model_id, fingerprint=weights_hash)
    return loop.optimize_one(
        cfg,
        workdir,
        env=env,
        reward_fn=reward_fn,
        prompt_embedding=prompt_embedding,
        progress=progress,
        should_stop=should_stop,
    )


def bandit_reward(x, prompts):
    """``-||x - target||^2 / d`` per sample: E[r] = -(||mu - t||^2 + sum sigma^2) / d."""
    return -np.sum((np.asarray(x) - TARGET[None]) ** 2, axis=(1, 2, 3)) / D


def expected_reward(state):
    mu, sigma = np.asarray(state.policy.mu), np.asarray(state.sigma)
    return -(np.sum((mu - TARGET) ** 2) + np.sum(sigma**2)) / D


def run_bandit(tmp_path, preset, **overrides):
    # 150 AdamW steps of lr 1e-3 can move mu by at most 0.15, so the bandit uses lr 1e-2 (and the small
    # DRCM a matching lr); everything else is the preset.
    kw = dict(
        prompt="bandit", lr=1e-2, drcm_lr=1e-2, drcm_hidden=(32, 32, 32), checkpoint_every=1000, num_final_samples=0
    )
    kw.update(overrides)
    cfg = get_preset(preset, **kw)
    emb = np.ones(8, np.float32) if cfg.drcm_text_conditioned else None
    state = optimize(
        cfg, tmp_path / preset, env_fn=identity_env, reward_fn=bandit_reward, latent_shape=SHAPE, prompt_embedding=emb
    )
    return cfg, state, read_metrics(tmp_path / preset / "metrics.jsonl")


def test_paper_preset_climbs_the_bandit(tmp_path):
    cfg, state, metrics = run_bandit(tmp_path, "paper")
    assert cfg.iterations == 150 and len(metrics) == 150
    # Measured: E[r] -2.000 -> -1.740, mean(mu) 0 -> 0.112 (target 1), mean sigma 0.97.
    assert expected_reward(state) > -1.85
    assert float(np.mean(state.policy.mu)) > 0.06
    r = np.array([m["reward/mean"] for m in metrics])
    assert r[-50:].mean() > r[:50].mean() + 0.05
    assert int(state.step) == 150
    # The replay buffer is in use and clipping binds on stale samples.
    assert metrics[-1]["replay/size"] == cfg.replay_size
    assert np.mean([m["rca/clip_frac"] for m in metrics]) > 0.3


def test_official_preset_climbs_the_bandit(tmp_path):
    cfg, state, metrics = run_bandit(tmp_path, "official")
    # Measured: E[r] -2.000 -> -1.567, mean(mu) 0.150.
    assert expected_reward(state) > -1.7
    assert float(np.mean(state.policy.mu)) > 0.08
    assert float(jnp.min(state.sigma)) >= cfg.sigma_min
    assert all(m["replay/size"] == 1 for m in metrics)


def test_ablations_run_and_behave_as_described(tmp_path):
    init = init_state(get_preset("paper", drcm_hidden=(32, 32, 32)), SHAPE)
    _, no_drcm, m_no_drcm = run_bandit(tmp_path / "a", "paper", use_drcm=False)
    # w/o DRCM the raw (always negative) reward is the signal: V_phi never moves, every sample is pushed
    # away, sigma grows (measured E[r] -2.088, mean sigma 1.06).
    for a, b in zip(jax.tree.leaves(no_drcm.drcm_params), jax.tree.leaves(init.drcm_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(m["adv/mean"] == m["reward/mean"] for m in m_no_drcm)
    assert float(jnp.mean(no_drcm.sigma)) > 1.02
    _, no_rca, m_no_rca = run_bandit(tmp_path / "b", "paper", use_rca=False)
    # w/o RCA: REINFORCE on the current sample, nothing clipped (measured E[r] -1.604).
    assert all(m["rca/clip_frac"] == 0.0 for m in m_no_rca)
    assert expected_reward(no_rca) > -1.8
    assert expected_reward(no_drcm) < expected_reward(no_rca) - 0.2


def tiny(**kw):
    base = dict(prompt="a red circle", drcm_hidden=(8, 8, 8), iterations=7, checkpoint_every=3)
    base.update(kw)
    return get_preset("tiny", **base)


TINY_SHAPE = (1, 2, 2)


def bandit_reward_tiny(x, prompts):
    return -np.mean((np.asarray(x) - 1.0) ** 2, axis=(1, 2, 3))


def count_update_traces(monkeypatch):
    """Makes every trace of the update function append to the returned list."""
    traces = []
    real = trainer.make_update_fn

    def counting(config):
        fn = real(config)

        def wrapped(state, batch):
            traces.append(1)
            return fn(state, batch)

        return wrapped

    monkeypatch.setattr(trainer, "make_update_fn", counting)
    trainer.batch_update_jit.cache_clear()  # compiled programs of earlier tests would hide the trace
    return traces


def test_full_run_writes_its_directory_without_recompiling(tmp_path, monkeypatch):
    traces = count_update_traces(monkeypatch)
    cfg = tiny(num_final_samples=3, samples_per_iter=2)
    state = optimize(
        cfg,
        tmp_path / "run",
        env_fn=identity_env,
        reward_fn=bandit_reward_tiny,
        latent_shape=TINY_SHAPE,
        model_id="shapes@local",
        weights_hash="abc123",
    )
    assert len(traces) == 1  # 7 iterations, one trace of the update
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["model_id"] == "shapes@local" and record["weights_hash"] == "abc123"
    assert record["latent_shape"] == list(TINY_SHAPE)
    assert config_from_json(json.dumps(record["config"])) == cfg
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 8))
    for key in (
        "reward/mean",
        "reward/max",
        "drcm/pred",
        "drcm/loss",
        "adv/mean",
        "rca/ratio_mean",
        "rca/ratio_min",
        "rca/ratio_max",
        "rca/clip_frac",
        "policy/mu_abs",
        "policy/sigma_mean",
        "time/iter_s",
    ):
        assert key in metrics[-1], key
    # Prompt-set keys and files stay out of a single run's directory.
    assert not any(k in m for m in metrics for k in ("time/group_iter_s", "batch/running"))
    assert not (tmp_path / "run" / "status.json").exists()
    assert metrics[0]["reward/max"] >= metrics[0]["reward/mean"]
    assert np.load(tmp_path / "run" / "final_latents.npy").shape == (3, *TINY_SHAPE)
    assert np.load(tmp_path / "run" / "final_samples.npy").shape == (3, *TINY_SHAPE)
    assert np.load(tmp_path / "run" / "final_rewards.npy").shape == (3,)
    assert sample_from_state(state, jax.random.PRNGKey(0), 5).shape == (5, *TINY_SHAPE)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["6", "7"]


def test_resume_ends_in_the_uninterrupted_state(tmp_path):
    cfg = tiny(samples_per_iter=2)
    full = optimize(cfg, tmp_path / "full", env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE)
    calls = []

    def crashing_env(x, rng):
        calls.append(1)
        if len(calls) == 6:  # iteration 6 of 7: the last checkpoint is at 3
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        optimize(cfg, tmp_path / "cut", env_fn=crashing_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE)
    assert int(load_state(tmp_path / "cut").step) == 3
    resumed = optimize(
        cfg, tmp_path / "cut", env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE
    )
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [m["step"] for m in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == list(range(1, 8))
    for name in ("final_latents", "final_samples", "final_rewards"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "full" / f"{name}.npy"), np.load(tmp_path / "cut" / f"{name}.npy")
        )
    # A finished run re-run with the same config returns the same state without redoing work.
    again = optimize(cfg, tmp_path / "full", env_fn=crashing_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE)
    np.testing.assert_array_equal(again.policy.mu, full.policy.mu)


def test_should_stop_checkpoints_the_current_iteration_and_resumes_exactly(tmp_path):
    cfg = tiny(samples_per_iter=2, num_final_samples=2)
    full = optimize(cfg, tmp_path / "full", env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE)
    asked = []

    def stop_after_four():
        asked.append(1)
        return len(asked) == 4  # asked after every iteration: true after iteration 4 (no checkpoint step)

    with pytest.raises(loop.Interrupted, match="interrupted at iteration 4; rerun the same command") as info:
        optimize(
            cfg,
            tmp_path / "cut",
            env_fn=identity_env,
            reward_fn=bandit_reward_tiny,
            latent_shape=TINY_SHAPE,
            should_stop=stop_after_four,
        )
    assert info.value.step == 4 and len(asked) == 4
    # The interrupt saved iteration 4 itself (the regular checkpoint was at 3): nothing is redone.
    assert int(load_state(tmp_path / "cut").step) == 4
    assert [m["step"] for m in read_metrics(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not (tmp_path / "cut" / "final_samples.npy").exists()
    env = FunctionEnvironment(identity_env, TINY_SHAPE)
    resumed = loop.optimize_one(cfg, tmp_path / "cut", env=env, reward_fn=bandit_reward_tiny)
    assert env.calls == 3 + 1  # iterations 5..7 and the final samples
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    m_full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    m_cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    drop_time = lambda ms: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in ms]  # noqa: E731
    assert drop_time(m_cut) == drop_time(m_full)
    for name in ("final_latents", "final_samples", "final_rewards"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "full" / f"{name}.npy"), np.load(tmp_path / "cut" / f"{name}.npy")
        )


class RecordingSink:
    """A progress sink that records every call."""

    def __init__(self):
        self.calls = []

    def start(self, total, desc):
        self.calls.append(("start", total, desc))

    def update(self, n=1, **fields):
        self.calls.append(("update", n, fields))

    def advance(self, n):
        self.calls.append(("advance", n))

    def close(self):
        self.calls.append(("close",))


def test_single_run_reports_progress_to_the_sink(tmp_path):
    sink = RecordingSink()
    cfg = tiny(iterations=3, num_final_samples=0)
    optimize(
        cfg, tmp_path / "run", env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE, progress=sink
    )
    assert sink.calls[0] == ("start", 3, "FIND") and sink.calls[-1] == ("close",)
    updates = [c for c in sink.calls if c[0] == "update"]
    assert [c[1] for c in updates] == [1, 1, 1]
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [c[2]["reward"] for c in updates] == pytest.approx([m["reward/mean"] for m in metrics])
    assert sum(c[1] for c in sink.calls if c[0] in ("update", "advance")) == 3
    # A finished run rerun shows a full bar at once.
    again = RecordingSink()
    optimize(
        cfg,
        tmp_path / "run",
        env_fn=identity_env,
        reward_fn=bandit_reward_tiny,
        latent_shape=TINY_SHAPE,
        progress=again,
    )
    assert again.calls == [("start", 3, "FIND"), ("advance", 3), ("close",)]


def test_nan_rewards_are_skipped_and_counted(tmp_path):
    calls = []

    def flaky_reward(x, prompts):
        calls.append(1)
        r = bandit_reward_tiny(x, prompts)
        if len(calls) in (2, 4):
            r[0] = np.nan
        if len(calls) == 5:
            r[1] = np.inf
        return r

    cfg = tiny(samples_per_iter=2, max_bad_rewards=3, num_final_samples=0)
    state = optimize(cfg, tmp_path / "run", env_fn=identity_env, reward_fn=flaky_reward, latent_shape=TINY_SHAPE)
    assert int(state.bad_rewards) == 3 and int(state.step) == 7
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["reward/num_valid"] for m in metrics] == [2, 1, 2, 1, 1, 2, 2]
    assert all(np.isfinite(m["reward/mean"]) for m in metrics)
    assert np.all(np.isfinite(np.asarray(state.policy.mu)))


def test_too_many_bad_rewards_stop_the_run_with_state_saved(tmp_path):
    calls = []

    def broken_after_three(x, prompts):
        calls.append(1)
        r = bandit_reward_tiny(x, prompts)
        return r if len(calls) <= 3 else np.full_like(r, np.nan)

    cfg = tiny(max_bad_rewards=1)
    with pytest.raises(BadRewardError, match="max_bad_rewards=1"):
        optimize(cfg, tmp_path / "run", env_fn=identity_env, reward_fn=broken_after_three, latent_shape=TINY_SHAPE)
    # Iteration 4 was skipped (1 bad reward allowed); iteration 5 hit the limit. The state before it is kept.
    saved = load_state(tmp_path / "run")
    assert int(saved.step) == 4 and int(saved.bad_rewards) == 1


def test_nan_parameters_fail_loudly(tmp_path):
    def exploding_reward(x, prompts):
        return np.full((len(prompts),), 3e38, np.float32)

    with pytest.raises(FloatingPointError, match="NaN"):
        optimize(tiny(), tmp_path / "run", env_fn=identity_env, reward_fn=exploding_reward, latent_shape=TINY_SHAPE)


def test_existing_workdir_with_other_setup_is_refused(tmp_path):
    wd = tmp_path / "run"
    optimize(tiny(iterations=2), wd, env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE)
    with pytest.raises(RunDirError, match=r"config\.lr"):
        optimize(
            tiny(iterations=2, lr=0.5), wd, env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE
        )
    with pytest.raises(RunDirError, match="latent_shape"):
        optimize(tiny(iterations=2), wd, env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=(1, 4, 4))
    with pytest.raises(RunDirError, match="model_id"):
        optimize(
            tiny(iterations=2),
            wd,
            env_fn=identity_env,
            reward_fn=bandit_reward_tiny,
            latent_shape=TINY_SHAPE,
            model_id="other",
        )
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="not empty"):
        optimize(tiny(iterations=2), other, env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=TINY_SHAPE)
    assert (other / "thesis.tex").read_text() == "precious"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="prompt_embedding"):
        optimize(
            tiny(drcm_text_conditioned=True),
            tmp_path / "a",
            env_fn=identity_env,
            reward_fn=bandit_reward_tiny,
            latent_shape=TINY_SHAPE,
        )
    with pytest.raises(ValueError, match="prompt is empty"):
        optimize(
            tiny(prompt="  "),
            tmp_path / "b",
            env_fn=identity_env,
            reward_fn=bandit_reward_tiny,
            latent_shape=TINY_SHAPE,
        )
    with pytest.raises(ValueError, match="latent_shape"):
        optimize(tiny(), tmp_path / "c", env_fn=identity_env, reward_fn=bandit_reward_tiny, latent_shape=(4, 8))
    with pytest.raises(ValueError, match="2 rewards for 1 images|rewards for"):
        optimize(
            tiny(), tmp_path / "d", env_fn=identity_env, reward_fn=lambda x, p: np.zeros(2), latent_shape=TINY_SHAPE
        )


def test_update_vmaps_over_a_prompt_axis():
    # Every state leaf takes a leading prompt axis: a vmapped update equals per-prompt updates.
    cfg = tiny(samples_per_iter=2)
    update = trainer.make_update_fn(cfg)
    states = [init_state(dataclasses.replace(cfg, seed=s), TINY_SHAPE) for s in (0, 1)]
    xs = jax.random.normal(jax.random.PRNGKey(5), (2, 2, *TINY_SHAPE))
    batches = [
        trainer.Batch(
            x=xs[p],
            reward=jnp.array([0.3, -0.1 * p]),
            valid=jnp.array([True, p == 0]),
            prompt_embedding=jnp.zeros((0,)),
        )
        for p in (0, 1)
    ]
    stack = lambda *t: jnp.stack(t)  # noqa: E731
    v_state, v_metrics = jax.jit(jax.vmap(update))(jax.tree.map(stack, *states), jax.tree.map(stack, *batches))
    for p in (0, 1):
        s, m = jax.jit(update)(states[p], batches[p])
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(v_state), strict=True):
            np.testing.assert_allclose(a, b[p], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(m["reward/mean"], v_metrics["reward/mean"][p], rtol=1e-6)


def test_normalize_advantage_is_off_by_default_and_scales_advantages():
    assert not get_preset("paper").normalize_advantage and not get_preset("official").normalize_advantage
    cfg = tiny(samples_per_iter=2, use_drcm=False, use_rca=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *TINY_SHAPE))
    batch = trainer.Batch(
        x=x, reward=jnp.array([5.0, 1.0]), valid=jnp.array([True, True]), prompt_embedding=jnp.zeros((0,))
    )
    _, m_raw = jax.jit(trainer.make_update_fn(cfg))(init_state(cfg, TINY_SHAPE), batch)
    cfg_n = dataclasses.replace(cfg, normalize_advantage=True)
    _, m_norm = jax.jit(trainer.make_update_fn(cfg_n))(init_state(cfg_n, TINY_SHAPE), batch)
    # The REINFORCE loss is linear in A; A = r = [5, 1] has std 2, so normalising halves the loss.
    np.testing.assert_allclose(m_norm["policy/pg_loss"], m_raw["policy/pg_loss"] / 2.0, rtol=1e-5)

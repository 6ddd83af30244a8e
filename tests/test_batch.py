"""Batched FIND: a group of prompts equals the same prompts run one at a time (one device here, four fake
CPU devices in a subprocess), per-prompt checkpoints and resume (also after ``should_stop``), per-prompt
failures, workdir checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from multidevice import run_on_four_devices

from find_jax import loop, optimize, rundir
from find_jax.config import get_preset
from find_jax.envs import devices
from find_jax.metrics import read_metrics
from find_jax.prompts import PromptItem, prompts_to_json
from find_jax.testing import FunctionEnvironment

SHAPE = (1, 2, 2)
TARGETS = {"a": 1.0, "b": -1.0, "c": 0.5, "d": 2.0, "e": -0.5}
ITEMS = [PromptItem(p, "even" if i % 2 == 0 else "odd") for i, p in enumerate("abcde")]
# Batched XLA kernels round differently from unbatched ones: measured max |diff| 1e-9 on mu after 7 iterations.
ATOL = 1e-6


def identity_env(embed_fn=None):
    """The "images" are the latents: ``[P, N, C, h, w]`` in, the same out."""
    return FunctionEnvironment(lambda x, rng: x, SHAPE, embed_fn=embed_fn)


def target_reward(x, prompts):
    """A prompt-dependent bandit: ``-mean((x - target[prompt])^2)``."""
    t = np.array([TARGETS[p] for p in prompts], np.float32)[:, None, None, None]
    return -np.mean((np.asarray(x) - t) ** 2, axis=(1, 2, 3))


def tiny(**kw):
    base = dict(drcm_hidden=(8, 8, 8), iterations=7, checkpoint_every=3, samples_per_iter=2, replay_size=4, lr=0.05)
    base.update(kw)
    return get_preset("tiny", **base)


def run_batch(workdir, items=ITEMS, cfg=None, reward_fn=target_reward, p=2, env=None, should_stop=None):
    """A prompt set through the loop, wired as :func:`find_jax.optimize.run_batch` wires a loaded model's
    environment: the embeddings, ``batch.json`` + ``prompts.json``, one run per prompt."""
    cfg = cfg or tiny()
    env = env or identity_env()
    items = list(items)
    workdir = Path(workdir)
    embeddings = env.prompt_embeddings([it.text for it in items]) if cfg.drcm_text_conditioned else None
    records = prompts_to_json(items)
    base = dataclasses.replace(cfg, prompt="")
    embed_dim = 0 if embeddings is None else int(embeddings.shape[1])
    record = rundir.batch_record(base, env.latent_shape, embed_dim, env.source, env.fingerprint)
    rundir.prepare_batch_dir(workdir, record, records, base)
    runs = [loop.PromptRun(r["index"], r["prompt"], r["category"], workdir / r["dir"], r["dir"]) for r in records]
    return loop.run_prompts(
        cfg,
        runs,
        workdir,
        env=env,
        reward_fn=reward_fn,
        embeddings=embeddings,
        batch_prompts=p,
        should_stop=should_stop,
    )


def single_run(tmp_path, text, cfg=None, reward_fn=target_reward, prompt_embedding=None):
    cfg = dataclasses.replace(cfg or tiny(), prompt=text)
    wd = tmp_path / f"single-{text}"
    env = FunctionEnvironment(lambda x, rng: x, SHAPE)
    state = loop.optimize_one(cfg, wd, env=env, reward_fn=reward_fn, prompt_embedding=prompt_embedding)
    return state, wd


def assert_same_run(batch_dir, single_dir, atol=ATOL):
    a, b = rundir.load_state(batch_dir), rundir.load_state(single_dir)
    assert int(a.step) == int(b.step)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol, rtol=0)
    ma, mb = read_metrics(batch_dir / "metrics.jsonl"), read_metrics(single_dir / "metrics.jsonl")
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    np.testing.assert_allclose([m["reward/mean"] for m in ma], [m["reward/mean"] for m in mb], atol=atol)
    for name in ("final_latents", "final_rewards"):
        np.testing.assert_allclose(np.load(batch_dir / f"{name}.npy"), np.load(single_dir / f"{name}.npy"), atol=atol)


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("batch") / "wd"
    return wd, run_batch(wd)


def test_batch_writes_one_single_run_directory_per_prompt(batch_run):
    wd, result = batch_run
    prompts = json.loads((wd / "prompts.json").read_text())
    assert [p["prompt"] for p in prompts] == list("abcde")
    assert [p["dir"] for p in prompts] == ["000-a", "001-b", "002-c", "003-d", "004-e"]
    assert prompts[1]["category"] == "odd"
    assert json.loads((wd / "batch.json").read_text())["config"]["prompt"] == ""
    assert [r.status for r in result.results] == ["done"] * 5 and not result.failed
    for p in prompts:
        run = wd / p["dir"]
        config, record = rundir.read_run(run)
        assert config.prompt == p["prompt"] and config.seed == 0
        assert record["latent_shape"] == list(SHAPE)
        assert sorted(os.listdir(run / "checkpoints")) == ["6", "7"]  # the manager keeps two
        assert len(read_metrics(run / "metrics.jsonl")) == 7
        assert np.load(run / "final_latents.npy").shape == (2, *SHAPE)
        assert json.loads((run / "status.json").read_text()) == {"status": "done", "step": 7, "error": ""}
    # Same seed, same first draws, but each prompt's own reward drives its own update: the distributions differ.
    mu = {p["prompt"]: np.asarray(rundir.load_state(wd / p["dir"]).policy.mu) for p in prompts}
    assert all(np.max(np.abs(mu[x] - mu[y])) > 1e-2 for x, y in ("ab", "bd", "ce", "ad"))


def test_batched_prompts_equal_their_single_runs(batch_run, tmp_path):
    wd, result = batch_run
    # "b" ran second in group 1; "e" ran alone in a padded group 3.
    for idx in (1, 4):
        _, single_dir = single_run(tmp_path, ITEMS[idx].text)
        assert_same_run(wd / result.results[idx].dir, single_dir)


def test_rerun_of_a_finished_batch_changes_nothing(batch_run):
    wd, _ = batch_run
    before = {p: (wd / p / "metrics.jsonl").read_text() for p in ("000-a", "004-e")}
    result = run_batch(wd, p=4)  # another group size resumes the same runs
    assert all(r.status == "done" for r in result.results)
    assert {p: (wd / p / "metrics.jsonl").read_text() for p in before} == before


def test_interrupted_batch_resumes_to_the_uninterrupted_result(batch_run, tmp_path):
    wd_full, _ = batch_run
    calls = []

    def crashing_reward(x, prompts):
        calls.append(1)
        if len(calls) == 5:  # iteration 5 of group 1: after the checkpoint at 3
            raise KeyboardInterrupt
        return target_reward(x, prompts)

    wd = tmp_path / "wd"
    with pytest.raises(KeyboardInterrupt):
        run_batch(wd, items=ITEMS[:2], reward_fn=crashing_reward)
    assert sorted(os.listdir(wd / "000-a" / "checkpoints")) == ["3"]
    assert len(read_metrics(wd / "000-a" / "metrics.jsonl")) == 4
    result = run_batch(wd, items=ITEMS[:2])
    assert [r.status for r in result.results] == ["done", "done"]
    for d in ("000-a", "001-b"):
        assert_same_run(wd / d, wd_full / d)


def test_should_stop_checkpoints_every_running_prompt_and_resumes_bit_for_bit(batch_run, tmp_path):
    wd_full, _ = batch_run
    asked = []

    def stop_in_group_two():
        asked.append(1)
        return len(asked) == 9  # group (a, b) ran its 7 iterations; (c, d) is at iteration 2

    wd = tmp_path / "wd"
    with pytest.raises(loop.Interrupted, match="interrupted at iteration 2; rerun") as info:
        run_batch(wd, should_stop=stop_in_group_two)
    assert info.value.step == 2
    assert json.loads((wd / "000-a" / "status.json").read_text())["status"] == "done"
    for d in ("002-c", "003-d"):  # both running prompts saved at iteration 2 (not a checkpoint step)
        assert int(rundir.load_state(wd / d).step) == 2
        assert len(read_metrics(wd / d / "metrics.jsonl")) == 2
        assert not (wd / d / "final_samples.npy").exists()
    assert not (wd / "004-e").exists()  # its group never started
    env = identity_env()
    result = run_batch(wd, env=env)
    assert [r.status for r in result.results] == ["done"] * 5
    assert env.calls == (5 + 1) + (7 + 1)  # (c, d): iterations 3..7 + final samples; (e): all; (a, b): nothing
    for d in ("000-a", "001-b", "002-c", "003-d", "004-e"):
        assert_same_run(wd / d, wd_full / d, atol=0)  # the same groups: bit for bit


def test_one_prompts_nan_rewards_do_not_stop_the_others(tmp_path):
    def reward(x, prompts):
        r = target_reward(x, prompts)
        r[[p == "b" for p in prompts]] = np.nan
        return r

    cfg = tiny(max_bad_rewards=3)
    result = run_batch(tmp_path / "wd", items=ITEMS[:3], cfg=cfg, reward_fn=reward, p=3)
    status = [r.status for r in result.results]
    assert status == ["done", "failed", "done"]
    failed = result.results[1]
    assert "max_bad_rewards=3" in failed.error and failed.step == 1
    # As a single run: the state before the failing iteration is checkpointed, with its skipped rewards.
    saved = rundir.load_state(tmp_path / "wd" / "001-b")
    assert int(saved.step) == 1 and int(saved.bad_rewards) == 2
    assert json.loads((tmp_path / "wd" / "001-b" / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "wd" / "001-b" / "final_samples.npy").exists()
    _, single_c = single_run(tmp_path, "c", cfg=cfg)
    assert_same_run(tmp_path / "wd" / "002-c", single_c)


def test_nan_parameters_fail_only_their_prompt(tmp_path):
    def reward(x, prompts):
        r = target_reward(x, prompts)
        r[[p == "a" for p in prompts]] = 3e38  # finite, but the DRCM's squared error overflows to NaN
        return r

    result = run_batch(tmp_path / "wd", items=ITEMS[:2], reward_fn=reward)
    assert [r.status for r in result.results] == ["failed", "done"]
    assert "NaN" in result.results[0].error
    assert read_metrics(tmp_path / "wd" / "000-a" / "metrics.jsonl") == []  # no line for the bad iteration
    assert result.results[1].step == 7


def test_workdir_of_another_setup_is_refused(batch_run, tmp_path):
    wd, _ = batch_run
    before = (wd / "prompts.json").read_text()
    with pytest.raises(rundir.RunDirError, match="config.lr"):
        run_batch(wd, cfg=tiny(lr=0.5))
    with pytest.raises(rundir.RunDirError, match="prompt list differs"):
        run_batch(wd, items=ITEMS[:3])
    assert (wd / "prompts.json").read_text() == before
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("keep")
    with pytest.raises(rundir.RunDirError, match="not empty"):
        run_batch(tmp_path / "full")
    assert (tmp_path / "full" / "precious.txt").read_text() == "keep"
    single_state, single_dir = single_run(tmp_path, "a")
    with pytest.raises(rundir.RunDirError, match="single-prompt run"):
        run_batch(single_dir)


def test_bad_arguments(tmp_path):
    # The wiring refuses these before loading anything; the loop itself too, writing nothing.
    with pytest.raises(ValueError, match="batch-prompts"):
        optimize.run_batch(tiny(), ITEMS, tmp_path / "x", batch_prompts=0)
    with pytest.raises(ValueError, match="empty"):
        optimize.run_batch(tiny(), [], tmp_path / "y")
    runs = [loop.PromptRun(0, "a", "", tmp_path / "w" / "000-a", "000-a")]
    with pytest.raises(ValueError, match="batch-prompts"):
        loop.run_prompts(tiny(), runs, tmp_path / "w", env=identity_env(), reward_fn=target_reward, batch_prompts=0)
    with pytest.raises(ValueError, match="empty"):
        loop.run_prompts(tiny(), [], tmp_path / "w", env=identity_env(), reward_fn=target_reward)
    with pytest.raises(ValueError, match="prompt_embedding"):
        loop.run_prompts(
            tiny(drcm_text_conditioned=True), runs, tmp_path / "w", env=identity_env(), reward_fn=target_reward
        )
    with pytest.raises(ValueError, match="embed_fn"):
        run_batch(tmp_path / "z", cfg=tiny(drcm_text_conditioned=True))
    assert not any((tmp_path / d).exists() for d in ("x", "y", "w", "z"))


def test_text_conditioned_drcm_gets_each_prompts_embedding(tmp_path):
    cfg = tiny(drcm_text_conditioned=True, iterations=3)

    def embed(text):
        return np.full(4, TARGETS[text], np.float32)

    result = run_batch(tmp_path / "wd", items=ITEMS[:2], cfg=cfg, env=identity_env(embed_fn=embed))
    assert [r.status for r in result.results] == ["done", "done"]
    for r in result.results:
        _, record = rundir.read_run(tmp_path / "wd" / r.dir)
        assert record["embed_dim"] == 4 and record["prompt_embedding_hash"] == rundir.array_hash(embed(r.prompt))
    _, single_dir = single_run(tmp_path, "b", cfg=cfg, prompt_embedding=embed("b"))
    assert_same_run(tmp_path / "wd" / "001-b", single_dir)


def test_mesh_uses_devices_that_divide_the_group():
    local = jax.local_devices()
    mesh = devices.make_prompt_mesh(3, local)
    assert mesh.axis_names == ("prompts",) and mesh.size == 1
    with pytest.raises(ValueError):
        devices.make_prompt_mesh(0, local)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    from pathlib import Path
    import jax, numpy as np
    from find_jax import envs, loop, optimize, rundir, trainer
    from find_jax.config import get_preset
    from find_jax.envs.devices import make_prompt_mesh, shard_prompts
    from find_jax.prompts import PromptItem
    from reward_models import make_reward

    model_dir, out = sys.argv[1], Path(sys.argv[2])
    assert len(jax.devices()) == 4, jax.devices()
    assert make_prompt_mesh(6).size == 3 and make_prompt_mesh(8).size == 4
    model = envs.load_model(model_dir)
    cfg = get_preset("tiny", reward="brightness", drcm_hidden=(8, 8, 8), iterations=4, checkpoint_every=2,
                     samples_per_iter=2, replay_size=4, lr=0.05, eta=1.0)
    texts = ["a red cat", "a blue dog", "two green birds", "a yellow car"]
    result = optimize.run_batch(cfg, [PromptItem(t) for t in texts], out / "batch", batch_prompts=4, model=model)
    assert result.devices == 4 and not result.failed, result
    # The state really is split over the 4 devices.
    mesh = make_prompt_mesh(4)
    stacked = shard_prompts(trainer.stack_states([rundir.load_state(out / "batch" / r.dir)
                                                  for r in result.results]), mesh)
    assert len(stacked.policy.mu.sharding.device_set) == 4
    assert stacked.policy.mu.addressable_shards[0].data.shape[0] == 1
    # Four single runs, the single-prompt path, sharing one environment (one compiled sampler).
    env = envs.make_environment(model, envs.sampler_settings(cfg))
    reward_fn = make_reward("brightness")
    diffs = {}
    for t, r in zip(texts, result.results):
        single = loop.optimize_one(dataclasses.replace(cfg, prompt=t), out / ("single-" + r.dir), env=env,
                                   reward_fn=reward_fn)
        _, record = rundir.read_run(out / ("single-" + r.dir))
        assert record["model_id"] == model.source and record["weights_hash"] == model.fingerprint
        b = rundir.load_state(out / "batch" / r.dir)
        diffs[t] = [float(np.max(np.abs(np.asarray(b.policy.mu) - np.asarray(single.policy.mu)))),
                    float(np.max(np.abs(np.asarray(b.sigma) - np.asarray(single.sigma)))),
                    float(np.max(np.abs(np.load(out / "batch" / r.dir / "final_samples.npy")
                                        - np.load(out / ("single-" + r.dir) / "final_samples.npy"))))]
        moved = float(np.max(np.abs(np.asarray(single.policy.mu))))
        diffs[t].append(moved)
    print(json.dumps(diffs))
    """
)


SHARDED_BANDIT_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    from pathlib import Path
    import jax, numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_batch import ITEMS, run_batch, single_run, tiny
    from find_jax import rundir
    from find_jax.envs.devices import make_prompt_mesh

    out = Path(sys.argv[1])
    assert len(jax.devices()) == 4, jax.devices()
    sizes = [make_prompt_mesh(p).size for p in (1, 2, 3, 4, 6, 8)]
    cfg = tiny()
    result = run_batch(out / "batch", items=ITEMS[:4], cfg=cfg, p=4)
    diffs = {}
    for item, r in zip(ITEMS, result.results):
        if item.text not in ("a", "d"):  # the first and the last device
            continue
        single, _ = single_run(out, item.text, cfg=cfg)
        b = rundir.load_state(out / "batch" / r.dir)
        diffs[item.text] = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                               for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(single)))
    print(json.dumps({"devices": result.devices, "sizes": sizes, "diffs": diffs}))
    """
)


def test_sharded_group_on_four_devices_equals_single_runs(tmp_path):
    out = run_on_four_devices(SHARDED_BANDIT_SCRIPT, tmp_path, os.path.dirname(__file__))
    assert out["devices"] == 4
    assert out["sizes"] == [1, 2, 3, 4, 3, 4]  # the most devices that divide the group
    assert set(out["diffs"]) == set("ad")
    assert max(out["diffs"].values()) < ATOL, out["diffs"]  # every leaf of every prompt's final state


@pytest.mark.slow
def test_four_prompts_sharded_over_four_devices_equal_four_single_runs(tiny_sd_dir, tmp_path):
    diffs = run_on_four_devices(SHARDED_SCRIPT, tiny_sd_dir, tmp_path)
    for text, (d_mu, d_sigma, d_images, moved) in diffs.items():
        # Tolerance: the tiny SD sampler batched over 4 prompts on 4 devices rounds differently from the
        # one-prompt sampler (float32). Measured after 4 iterations (lr 0.05, eta 1): |mu| moved 0.196, mu and
        # sigma agree to <= 2.8e-6, the final images to <= 3.7e-6.
        assert moved > 0.1, (text, moved)
        assert d_mu < 3e-5 and d_sigma < 3e-5, (text, d_mu, d_sigma)
        assert d_images < 1e-4, (text, d_images)


MULTI_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_batch import run_batch

    result = run_batch(Path(sys.argv[1]))
    print(json.dumps([r.status for r in result.results]))
    """
)


def test_two_processes_share_the_groups_of_one_workdir(batch_run, tmp_path):
    wd_full, _ = batch_run
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTI_PROCESS_SCRIPT, str(tmp_path / "wd"), os.path.dirname(__file__)],
            env={**os.environ, "JAX_PROCESS_ID": str(i), "JAX_NUM_PROCESSES": "2", "JAX_PLATFORMS": "cpu"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    status = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    # Groups (a, b), (c, d), (e): process 0 takes groups 0 and 2, process 1 group 1.
    assert status[0] == ["done", "done", "skipped", "skipped", "done"]
    assert status[1] == ["skipped", "skipped", "done", "done", "skipped"]
    for d in ("001-b", "002-c", "004-e"):
        assert_same_run(tmp_path / "wd" / d, wd_full / d)


def test_process_share_from_the_environment(monkeypatch):
    for name in ("FIND_JAX_PROCESS_ID", "JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert devices.process_share() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert devices.process_share() == (2, 4)
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "3")
    assert devices.process_share() == (1, 3)  # JAX's names win over SLURM's
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=3 must be in \[0"):
        devices.process_share()
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="must be integers"):
        devices.process_share()

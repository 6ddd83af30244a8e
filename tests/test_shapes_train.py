"""Training the shapes model: a tiny run writes the diffusers layout, resumes from its checkpoint."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from script_loader import load_script

from find_jax.envs.image.shapes import model as shapes_model
from find_jax.envs.image.shapes import world
from find_jax.envs.image.shapes.train import (
    TrainConfig,
    _check_config,
    alphas_cumprod,
    config_from_dict,
    config_to_dict,
    train,
)

LAYOUT = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_flax_model.msgpack",
    "text_encoder/config.json",
    "text_encoder/flax_model.msgpack",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "scheduler/scheduler_config.json",
    "decoder/config.json",
    "training.json",
]


def tiny(steps: int, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch=4, checkpoint_every=2, log_every=1, model=shapes_model.tiny_config(), **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """2 steps, then a resume to 3 steps in the same workdir."""
    root = tmp_path_factory.mktemp("shapes_train")
    work, out = root / "work", root / "out"
    logs: list[str] = []
    first = train(tiny(2), str(work), str(out), log=logs.append)
    layout_after_first = {p: (out / p).exists() for p in LAYOUT}
    second = train(tiny(3), str(work), str(out), log=logs.append)
    return {"work": work, "out": out, "first": first, "second": second, "logs": logs, "layout": layout_after_first}


def test_two_steps_write_the_layout(run):
    assert all(run["layout"].values()), run["layout"]
    out = run["out"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "ShapesPipeline"
    assert {"unet", "text_encoder", "tokenizer", "scheduler", "decoder"} <= set(index)
    decoder = json.loads((out / "decoder/config.json").read_text())
    assert decoder == {"_class_name": "PixelDecoder", "factor": 2, "coord_channels": 2}
    sched = json.loads((out / "scheduler/scheduler_config.json").read_text())
    for key in (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "prediction_type",
        "set_alpha_to_one",
        "steps_offset",
        "clip_sample",
    ):
        assert key in sched
    assert sched["clip_sample"] is False and sched["prediction_type"] == "v_prediction"
    assert run["first"]["steps"] == 2 and np.isfinite(run["first"]["final_loss"])
    assert not (out.parent / "out.tmp").exists() and not (out.parent / "out.old").exists()


def test_resume_continues_from_the_checkpoint(run):
    assert any("resumed from step 2" in line for line in run["logs"])
    steps = [json.loads(line)["step"] for line in (run["work"] / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    record = json.loads((run["out"] / "training.json").read_text())
    assert record["steps"] == 3 and record["seed"] == 0
    assert record["data_bias"]["dominant_colour"]["circle"] == "red"
    assert record["wall_time_s"] >= run["first"]["wall_time_s"]
    assert record["host"]["devices"] >= 1 and record["host"]["cpu_count"] >= 1 and record["init_from"] is None


def test_exported_model_loads_and_samples(run):
    from find_jax.envs import SamplerSettings, load_model, make_environment

    model = load_model(str(run["out"]))
    assert model.latent_shape() == (14, 16, 16) and model.default_size == (32, 32)  # 12 image + 2 coordinate
    assert model.decoder.coord_channels == 2 and model.unet.config.in_channels == 14
    assert model.max_tokens == 16
    env = make_environment(model, SamplerSettings(steps=2, guidance=3.0), mesh=None)
    env_fn = env.bind(["a red circle"])
    images = env_fn(
        jax.random.normal(jax.random.PRNGKey(0), (1, 1, 14, 16, 16)), jax.random.split(jax.random.PRNGKey(1), 1)
    )
    assert images.shape == (1, 1, 32, 32, 3) and np.isfinite(np.asarray(images)).all()


def test_a_full_resolution_model_trains_exports_and_loads(tmp_path):
    """``factor=1``: the latent is the image itself plus the planes, ``[5, 32, 32]``."""
    from find_jax.envs import load_model

    three = shapes_model.with_levels(shapes_model.tiny_config(), (32, 64, 128))
    assert three.down_block_types == ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    assert three.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    both = shapes_model.with_levels(shapes_model.tiny_config(), (32, 64), attention_levels=2)
    assert both.down_block_types == ("CrossAttnDownBlock2D",) * 2 and both.up_block_types == ("CrossAttnUpBlock2D",) * 2
    with pytest.raises(ValueError, match="attention_levels"):
        shapes_model.with_levels(shapes_model.tiny_config(), (32, 64), attention_levels=3)
    cfg = shapes_model.with_levels(dataclasses.replace(shapes_model.tiny_config(), factor=1), (32, 32))
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3)))
    x0 = np.asarray(shapes_model.image_latents(cfg, images))
    assert x0.shape == (2, 5, 32, 32)
    np.testing.assert_allclose(x0[:, :3], images.transpose(0, 3, 1, 2) * 2 - 1, atol=1e-6)  # no fold
    out = tmp_path / "out"
    record = train(dataclasses.replace(tiny(1), model=cfg), str(tmp_path / "w"), str(out))
    assert np.isfinite(record["final_loss"])
    assert json.loads((out / "decoder/config.json").read_text())["factor"] == 1
    model = load_model(str(out))
    assert model.latent_shape() == (5, 32, 32) and model.unet.config.in_channels == 5
    assert model.unet.config.sample_size == 32
    np.testing.assert_allclose(np.asarray(model.decoder.decode({}, x0)), images, atol=1e-6)  # planes dropped


def test_a_decoder_config_that_disagrees_with_the_unet_is_refused(run, tmp_path):
    import shutil

    from find_jax.envs import ModelLoadError, load_model

    copy = tmp_path / "model"
    shutil.copytree(run["out"], copy)
    (copy / "decoder/config.json").write_text(json.dumps({"_class_name": "PixelDecoder", "factor": 2}))
    with pytest.raises(ModelLoadError, match="in_channels 14 != decoder latent channels 12"):
        load_model(str(copy))


def test_init_from_warm_starts_from_an_exported_model(run, tmp_path):
    from flax.serialization import msgpack_restore

    from find_jax.envs.image.shapes.train import init_state

    cfg = dataclasses.replace(tiny(1), init_from=str(run["out"]))
    model = shapes_model.build_model(cfg.model, str(tmp_path / "tok"))
    state = init_state(model, cfg, jax.random.PRNGKey(5))
    saved = msgpack_restore((run["out"] / "unet/diffusion_flax_model.msgpack").read_bytes())
    got, want = state.params["unet"]["conv_in"]["kernel"], saved["conv_in"]["kernel"]
    np.testing.assert_array_equal(np.asarray(got), want)  # the exported (EMA) weights, not a fresh init
    np.testing.assert_array_equal(np.asarray(state.ema_params["unet"]["conv_in"]["kernel"]), want)
    fresh = init_state(model, tiny(1), jax.random.PRNGKey(5))
    assert not np.array_equal(np.asarray(fresh.params["unet"]["conv_in"]["kernel"]), want)
    wider = dataclasses.replace(cfg.model, block_out_channels=(64,))
    other = shapes_model.build_model(wider, str(tmp_path / "tok2"))
    with pytest.raises(ValueError, match="do not fit"):
        init_state(other, dataclasses.replace(cfg, model=wider), jax.random.PRNGKey(5))


def test_resume_with_another_config_is_refused(run):
    other = dataclasses.replace(tiny(3), learning_rate=1e-2)
    with pytest.raises(ValueError, match="different config"):
        train(other, str(run["work"]), str(run["out"]))


def test_config_round_trips_and_bad_values_raise(tmp_path):
    cfg = tiny(5)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    bigger = dataclasses.replace(cfg, world=world.Geometry(8, 13, 2, dominant_prob=0.95))  # neither default nor legacy
    assert config_from_dict(json.loads(json.dumps(config_to_dict(bigger)))) == bigger
    old = {k: v for k, v in config_to_dict(cfg).items() if k != "world"}  # a config.json from before the field
    assert config_from_dict(old) == dataclasses.replace(cfg, world=world.LEGACY_GEOMETRY)
    no_bias = {**config_to_dict(bigger), "world": {"min_size": 10, "max_size": 14, "gap": 3}}  # before dominant_prob
    assert config_from_dict(no_bias).world == world.Geometry(10, 14, 3, world.LEGACY_GEOMETRY.dominant_prob)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    _check_config(str(tmp_path / "old"), dataclasses.replace(cfg, world=world.LEGACY_GEOMETRY))  # its world
    with pytest.raises(ValueError, match=r"different config \(fields \['world'\]\)"):
        _check_config(str(tmp_path / "old"), bigger)
    with pytest.raises(ValueError, match="do not fit"):
        train(dataclasses.replace(cfg, world=world.Geometry(10, 15, 3)), str(tmp_path / "w"), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="steps"):
        train(tiny(0), str(tmp_path / "w"), str(tmp_path / "o"))


def test_image_latents_append_coordinate_planes_that_the_decoder_drops():
    from find_jax.envs.image.decoders import PixelDecoder

    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (3, 32, 32, 3)))
    cfg = shapes_model.tiny_config()
    x0 = np.asarray(shapes_model.image_latents(cfg, images))
    assert x0.shape == (3, 14, 16, 16)
    x_plane, y_plane = x0[0, 12], x0[0, 13]
    np.testing.assert_allclose(x_plane[:, 0], -1.0) and np.testing.assert_allclose(x_plane[:, -1], 1.0)
    np.testing.assert_allclose(y_plane[0, :], -1.0) and np.testing.assert_allclose(y_plane[-1, :], 1.0)
    assert (np.diff(x_plane, axis=1) > 0).all() and (np.diff(y_plane, axis=0) > 0).all()
    np.testing.assert_array_equal(x0[1, 12:], x0[0, 12:])  # the same planes for every image
    decoder = PixelDecoder(factor=2, coord_channels=2)
    assert decoder.latent_shape(32, 32) == (14, 16, 16)
    np.testing.assert_allclose(np.asarray(decoder.decode({}, x0)), images, atol=1e-6)  # inverse; planes dropped
    x0_none = shapes_model.image_latents(dataclasses.replace(cfg, coord_channels=0), images)
    np.testing.assert_array_equal(np.asarray(x0_none), x0[:, :12])


def test_bad_coordinate_plane_count_is_refused(tmp_path):
    from find_jax.envs.image.decoders import coord_planes

    with pytest.raises(ValueError, match="0 or 2"):
        coord_planes(16, 16, 3)
    module = load_script("train_shapes")
    with pytest.raises(SystemExit):  # argparse: invalid choice, before anything is written
        module.main(["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--coord-channels", "1"])
    assert not (tmp_path / "w").exists()


def test_timesteps_put_the_asked_share_of_the_batch_at_high_noise():
    from find_jax.envs.image.shapes.train import sample_timesteps

    t = np.asarray(sample_timesteps(jax.random.PRNGKey(0), 4000, 1000, 0.5, 600))
    assert t.dtype == np.int32 and t.min() >= 0 and t.max() < 1000
    assert (t[:2000] >= 600).all()  # the high-noise share
    low = t[2000:]  # the uniform share covers the whole range
    assert low.min() < 50 and low.max() > 950 and abs(low.mean() - 500) < 25
    uniform = np.asarray(sample_timesteps(jax.random.PRNGKey(0), 4000, 1000, 0.0, 600))
    assert abs((uniform >= 600).mean() - 0.4) < 0.03


def test_bad_timestep_sampling_is_refused(tmp_path):
    for bad in ({"high_noise_fraction": 1.5}, {"high_noise_from": 1000}, {"high_noise_from": -1}):
        with pytest.raises(ValueError, match="high_noise"):
            train(tiny(1, **bad), str(tmp_path / "w"), str(tmp_path / "o"))
    coords = dataclasses.replace(shapes_model.tiny_config(), coord_channels=3)
    with pytest.raises(ValueError, match="coord_channels"):
        train(dataclasses.replace(tiny(1), model=coords), str(tmp_path / "w"), str(tmp_path / "o"))
    # refused before anything is written: the same workdir then takes a good config
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()


def test_noise_schedule_matches_diffusers():
    from diffusers import DDIMScheduler

    cfg = shapes_model.ShapesModelConfig()
    sched = DDIMScheduler.from_config(shapes_model.scheduler_config(cfg))
    np.testing.assert_allclose(np.asarray(alphas_cumprod(cfg)), sched.alphas_cumprod.numpy(), rtol=1e-5)


DATA_PARALLEL_SCRIPT = r"""
import json, sys
from pathlib import Path
from find_jax.envs.image.shapes import model as shapes_model
from find_jax.envs.image.shapes.train import TrainConfig, train

root = Path(sys.argv[1])
logs = []
for steps in (2, 3):  # as the `run` fixture: 2 steps, then a resume to 3
    cfg = TrainConfig(steps=steps, batch=4, checkpoint_every=2, log_every=1, model=shapes_model.tiny_config())
    train(cfg, str(root / "work"), str(root / "out"), log=logs.append)
losses = [json.loads(line)["loss/mean"] for line in (root / "work" / "metrics.jsonl").read_text().splitlines()]
print(json.dumps({"logs": logs, "losses": losses}))
"""


def test_data_parallel_training_on_four_devices_matches_one_device(run, tmp_path):
    from multidevice import run_on_four_devices

    out = run_on_four_devices(DATA_PARALLEL_SCRIPT, tmp_path)
    assert any("data parallel over 4 devices" in line for line in out["logs"]), out["logs"]
    assert any("resumed from step 2" in line for line in out["logs"]), out["logs"]
    one = [json.loads(line)["loss/mean"] for line in (run["work"] / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(out["losses"]) == 3
    np.testing.assert_allclose(out["losses"], one, rtol=1e-4)  # same data, noise and init; sums reordered


def test_max_seconds_stops_checkpointed_where_it_reached(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    logs: list[str] = []
    first = train(tiny(50), str(work), str(out), log=logs.append, max_seconds=0.0)  # stops after its first step
    assert any("time limit" in line for line in logs)
    assert first["steps"] == 1
    assert json.loads((out / "training.json").read_text())["steps"] == 1  # exported where it stopped
    assert (work / "checkpoints" / "1").is_dir()  # a re-run resumes from here (test_resume_continues_...)


def test_should_stop_checkpoints_the_step_it_reached(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    logs: list[str] = []
    first = train(tiny(50), str(work), str(out), log=logs.append, should_stop=lambda: True)
    assert first["steps"] == 1 and any("asked to stop at step 1" in line for line in logs)
    assert json.loads((out / "training.json").read_text())["steps"] == 1
    assert (work / "checkpoints" / "1").is_dir()


def test_train_script_stops_on_sigterm_checkpointed_and_exits_143(tmp_path, monkeypatch, capsys):
    import os
    import signal

    script = load_script("train_shapes")
    real_train = script.train

    def train_after_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while training: the handler only sets the flag
        return real_train(*args, **kwargs)

    monkeypatch.setattr(script, "train", train_after_sigterm)
    work, out = tmp_path / "w", tmp_path / "o"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        script.main(["--tiny", "--workdir", str(work), "--out", str(out), "--steps", "50", "--log-every", "1"])
    assert exc.value.code == 143
    assert "SIGTERM: stopped at step 1, checkpointed" in capsys.readouterr().out
    assert json.loads((out / "training.json").read_text())["steps"] == 1 and (work / "checkpoints" / "1").is_dir()
    assert signal.getsignal(signal.SIGTERM) is before  # the script's handler is gone again


def test_train_script_architecture_flags_are_checked(tmp_path):
    script = load_script("train_shapes")
    base = ["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--steps", "1"]
    for bad in (
        ["--channels", "16,32"],
        ["--channels", "48,96"],
        ["--channels", "a,b"],
        ["--layers-per-block", "0"],
        ["--factor", "3"],
        ["--object-sizes", "10"],
        ["--object-sizes", "10,x"],
        ["--object-sizes", "10,16"],
        ["--object-gap", "0"],
        ["--dominant-prob", "1"],
        ["--attention-levels", "3"],
        ["--attention-levels", "0"],
    ):
        with pytest.raises(SystemExit):
            script.main(base + bad)
    with pytest.raises(ValueError, match="cannot be halved 4 times"):  # 8x8 latent, 5 levels
        script.main(base + ["--factor", "4", "--channels", "32,32,32,32,32"])
    with pytest.raises(SystemExit):
        script.main(base + ["--max-minutes", "0"])
    assert not (tmp_path / "w").exists()  # refused before anything was written

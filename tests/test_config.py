"""FIND's configuration: the presets against the paper and its public code, field comments, JSON round trip,
and the errors that name the bad field."""

import dataclasses

import pytest

from find_jax.config import FindConfig, config_from_json, config_hash, config_to_json, get_preset


def test_presets_follow_paper_and_public_code():
    paper = get_preset("paper")
    assert paper == FindConfig()
    assert (paper.iterations, paper.lr, paper.clip_eps, paper.eta, paper.steps) == (150, 1e-3, 0.02, 0.0, 50)
    assert (paper.logprob_reduce, paper.clip_mode, paper.reference) == ("sum", "ppo_min", "previous")
    assert paper.kl_weight == 0.0 and paper.reward_weight == 1.0 and paper.replay_size > 1
    off = get_preset("official")
    assert (off.logprob_reduce, off.clip_mode, off.reference, off.sigma_param) == ("mean", "clamp", "initial", "clamp")
    assert (off.clip_eps, off.kl_weight, off.reward_weight, off.eta, off.sigma_min) == (0.2, 0.01, 10.0, 1.0, 1e-4)
    assert off.replay_size == 1 and off.drcm_text_conditioned and off.drcm_lr == 1e-4
    assert get_preset("official", samples_per_iter=3).replay_size == 3
    assert get_preset("tiny").iterations < 20


def test_every_config_field_has_a_comment():
    import inspect

    from find_jax import config as config_module

    src = inspect.getsource(config_module.FindConfig)
    for f in dataclasses.fields(FindConfig):
        line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f.name}:"))
        assert "#" in line, f"field {f.name} has no comment"


def test_parse_assignment_reads_json_values_and_keeps_other_text():
    from find_jax.config import parse_assignment

    assert parse_assignment("lr=0.03") == ("lr", 0.03)
    assert parse_assignment(" mu_grid =4") == ("mu_grid", 4)
    assert parse_assignment("drcm=false") == ("drcm", False)
    assert parse_assignment("rgb=[0, 1, 0]") == ("rgb", [0, 1, 0])
    assert parse_assignment("prompt=a red circle=left") == ("prompt", "a red circle=left")  # split at the first =
    for bad in ("lr", "=3", " =3", ""):
        with pytest.raises(ValueError, match="is not KEY=VALUE"):
            parse_assignment(bad)
    with pytest.raises(ValueError, match="is not --reward-option KEY=VALUE"):
        parse_assignment("scale", "--reward-option KEY=VALUE")


def test_a_bad_reward_option_is_refused_before_anything_is_written(tmp_path, capsys):
    from find_jax.cli import main

    workdir = tmp_path / "run"
    args = ["optimize", "--prompt", "a red circle", "--workdir", str(workdir), "--cache-dir", "off", "--quiet"]
    assert main([*args, "--reward-option", "scale"]) == 2
    assert "'scale' is not --reward-option KEY=VALUE" in capsys.readouterr().err
    assert not workdir.exists()


def test_config_json_roundtrip_and_hash():
    cfg = get_preset("official", prompt="a green dog", reward_options={"rgb": [0, 1, 0], "scale": 2})
    assert cfg.reward_options == (("rgb", (0, 1, 0)), ("scale", 2))
    assert cfg.reward_options_dict() == {"rgb": (0, 1, 0), "scale": 2}
    back = config_from_json(config_to_json(cfg))
    assert back == cfg and hash(back) == hash(cfg)
    assert config_hash(back) == config_hash(cfg) != config_hash(get_preset("paper"))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown preset 'fast'.*paper"):
        get_preset("fast")
    with pytest.raises(ValueError, match="unknown config field"):
        get_preset("paper", learning_rate=1.0)
    with pytest.raises(ValueError, match="clip_mode"):
        get_preset("paper", clip_mode="dual")
    with pytest.raises(ValueError, match="iterations"):
        get_preset("paper", iterations=0)
    with pytest.raises(ValueError, match="replay_size"):
        get_preset("paper", samples_per_iter=4, replay_size=2)
    with pytest.raises(ValueError, match="lr"):
        get_preset("paper", lr=float("nan"))
    with pytest.raises(ValueError, match="reward option"):
        get_preset("paper", reward_options={"f": object()})
    with pytest.raises(ValueError, match="model must be None"):
        get_preset("paper", model="")
    with pytest.raises(ValueError, match="not valid JSON"):
        config_from_json("{")
    with pytest.raises(ValueError, match="unknown config field"):
        config_from_json('{"lr": 0.1, "colour": 1}')
    with pytest.raises(ValueError, match="iterations must be int"):
        config_from_json('{"iterations": "150"}')

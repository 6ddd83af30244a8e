"""Run configuration: one typed, frozen config with named presets (DESIGN.md §2).

:class:`FindConfig` holds every choice of a FIND run; the presets are functions on top of the defaults:

* ``paper`` (default): what the paper's text says (section 4-5): summed log-prob, log-space sigma, PPO
  min-clip with eps 0.02 against the *previous* policy, a replay buffer of recent samples, DRCM on
  ``(mu, sigma)``, deterministic DDIM (eta 0), 150 iterations, AdamW lr 1e-3.
* ``official``: the public PyTorch code's behaviour (mean log-prob, sigma clamped >= 1e-4, plain clamp with
  eps 0.2 against the fixed N(0, I), no replay, ``0.01 * mean(mu^2 + (sigma-1)^2)`` prior term,
  reward weight 10, text-conditioned DRCM, eta 1.0) — except its stale-reward bug (both updates read the
  oldest reward of its buffer), which is not reproduced.
* ``tiny``: ``paper`` shrunk for tests and CI (few iterations, few sampler steps, small DRCM).

The config never enters jitted code; the trainer reads plain Python values out of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from typing import Any

from find_jax.envs.base import SAMPLER_DEFAULTS
from find_jax.policy import LOGPROB_REDUCES, SIGMA_PARAMS

CLIP_MODES = ("ppo_min", "clamp")
REFERENCES = ("previous", "initial")
DTYPES = ("float32", "bfloat16")

# JSON scalar types allowed as reward option values.
_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclasses.dataclass(frozen=True)
class FindConfig:
    """Every setting of one FIND run (defaults = the ``paper`` preset). Saved as ``config.json``."""

    # --- task ---
    prompt: str = ""  # the text prompt whose initial-noise distribution is learned (required to run)
    negative_prompt: str = SAMPLER_DEFAULTS.negative_prompt  # CFG negative prompt ("" = unconditional branch)
    model: str | None = None  # diffusers directory or hub id (local cache only); None = shipped shapes model
    reward: str = "shapes"  # registered reward name (reward_models.available()); "imagereward" for SD1.5
    reward_options: tuple[tuple[str, Any], ...] = ()  # reward factory kwargs as sorted (name, value) pairs

    # --- optimisation loop (section 5.1) ---
    iterations: int = 150  # optimisation iterations (paper: 150; reward curve flattens after it, Fig. 7)
    samples_per_iter: int = 1  # N noises sampled and scored per iteration (paper Eq. 10: N = 1)
    seed: int = 0  # the run's single seed; every key is derived from it with split/fold_in
    lr: float = 1e-3  # AdamW learning rate on (mu, sigma_raw) (paper: 1e-3)
    weight_decay: float = 0.01  # AdamW decoupled weight decay, policy and DRCM (torch.optim.AdamW default)
    max_grad_norm: float = 0.0  # clip the policy gradient's global norm before AdamW; 0 = off (paper: none)

    # --- policy (Eq. 6) ---
    sigma_param: str = "log"  # "log": sigma=exp(s); "softplus": sigma=softplus(s); "clamp": sigma=s, s>=sigma_min
    sigma_min: float = 1e-4  # lower bound on sigma for sigma_param="clamp" (public code: 1e-4)
    logprob_reduce: str = "sum"  # "sum" over C,h,w elements (exact Gaussian, paper) or "mean" (public code)
    # Low-frequency mean (not in the paper): 0 = mu per element (paper). g > 0 = mu is a g x g grid per channel
    # (and per frame) upsampled by nearest neighbour to h x w: its policy gradient is averaged over each
    # (h/g) x (w/g) block (find_jax.policy.block_average). g = 1 leaves one free mean per channel. g divides h, w.
    mu_grid: int = 0  # 0 = per element (paper); g > 0 = mu on a g x g grid per channel (see above)

    # --- RCA: ratio clipping with importance-sampled replay (Eq. 11-13) ---
    use_rca: bool = True  # False = ablation "w/o RCA": plain REINFORCE -A*log pi(x) on the current samples
    clip_eps: float = 0.02  # eps: the ratio is clipped to [1-eps, 1+eps] (paper: 0.02; public code: 0.2)
    clip_mode: str = "ppo_min"  # "ppo_min": -min(rho*A, clip(rho)*A) (PPO); "clamp": -clip(rho)*A (public code)
    reference: str = "previous"  # "previous": rho vs the policy that drew x (paper); "initial": vs N(0, I)
    replay_size: int = 8  # recent samples kept for reuse (>= samples_per_iter; = samples_per_iter: no reuse)
    update_epochs: int = 1  # AdamW steps per iteration, each over the whole replay buffer
    max_log_ratio: float = 30.0  # |log rho| is clamped here before exp so float32 ratios stay finite

    # --- DRCM: dynamic reward calibration (Eq. 9-10) ---
    use_drcm: bool = True  # False = ablation "w/o DRCM": the raw reward is the advantage
    drcm_hidden: tuple[int, ...] = (256, 256, 256)  # hidden widths of the MLP V_phi (ReLU), then a linear 1
    drcm_lr: float = 1e-4  # AdamW learning rate of V_phi (public code: 1e-4)
    drcm_text_conditioned: bool = False  # True: V_phi(mu, sigma, prompt embedding) as the public code
    normalize_advantage: bool = False  # divide A by the std of the batch's advantages (not in the paper)

    # --- loss weights of the public code ---
    kl_weight: float = 0.0  # weight of the prior term mean(mu^2 + (sigma-1)^2) (paper: 0; public code: 0.01)
    reward_weight: float = 1.0  # multiplies the policy-gradient term (paper: 1; public code: 10)

    # --- environment: the frozen diffusion sampler ---
    # (defaults: find_jax.envs.base.SamplerSettings, the one place they are defined)
    steps: int = SAMPLER_DEFAULTS.steps  # DDIM steps (paper: 50)
    guidance: float = SAMPLER_DEFAULTS.guidance  # classifier-free guidance scale (SD default 7.5)
    eta: float = SAMPLER_DEFAULTS.eta  # DDIM eta: 0 = deterministic sampler as the paper; 1.0 = public code
    height: int | None = SAMPLER_DEFAULTS.height  # image height in pixels; None = the model's size (SD1.5: 512)
    width: int | None = SAMPLER_DEFAULTS.width  # image width in pixels; None = the model's native size
    num_frames: int | None = SAMPLER_DEFAULTS.num_frames  # video models: frames per video; None = the model's (16)
    dtype: str = "float32"  # sampler compute dtype: "float32" or "bfloat16" (GPU); the policy is float32

    # --- run bookkeeping ---
    checkpoint_every: int = 25  # save the full state every K iterations (and always at the end)
    max_bad_rewards: int = 10  # NaN/inf rewards are skipped and counted; the run stops after this many
    num_final_samples: int = 4  # images sampled from the learned distribution at the end (final_samples.npy)

    def __post_init__(self) -> None:
        validate_config(self)

    def reward_options_dict(self) -> dict[str, Any]:
        """``reward_options`` as keyword arguments for the reward factory."""
        return dict(self.reward_options)


def _normalise_reward_options(options: Any) -> tuple[tuple[str, Any], ...]:
    if options is None:
        return ()
    items = options.items() if isinstance(options, dict) else options
    out = []
    for item in items:
        try:
            key, value = item
        except (TypeError, ValueError):
            raise ValueError(f"reward_options must be a dict or (name, value) pairs; got item {item!r}") from None
        if not isinstance(key, str):
            raise ValueError(f"reward option names must be strings; got {key!r}")
        if isinstance(value, list):
            value = tuple(value)
        vals = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, _JSON_SCALARS) for v in vals):
            raise ValueError(f"reward option {key!r} must be a JSON scalar or a list of them; got {value!r}")
        out.append((key, value))
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"reward_options names repeat: {keys}")
    return tuple(sorted(out))


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(valid)}")


def validate_config(cfg: FindConfig) -> None:
    """Raises ``ValueError`` naming the field for any value the trainer cannot run with.

    Also normalises ``reward_options`` (a dict is accepted and stored as sorted pairs).
    """
    object.__setattr__(cfg, "reward_options", _normalise_reward_options(cfg.reward_options))
    object.__setattr__(cfg, "drcm_hidden", tuple(int(h) for h in cfg.drcm_hidden))
    _choice("sigma_param", cfg.sigma_param, SIGMA_PARAMS)
    _choice("logprob_reduce", cfg.logprob_reduce, LOGPROB_REDUCES)
    _choice("clip_mode", cfg.clip_mode, CLIP_MODES)
    _choice("reference", cfg.reference, REFERENCES)
    _choice("dtype", cfg.dtype, DTYPES)
    if not isinstance(cfg.prompt, str) or not isinstance(cfg.negative_prompt, str):
        raise ValueError("prompt and negative_prompt must be strings")
    if cfg.model is not None and (not isinstance(cfg.model, str) or not cfg.model.strip()):
        raise ValueError(f"model must be None (the shipped model) or a non-empty path/hub id; got {cfg.model!r}")
    if not isinstance(cfg.reward, str) or not cfg.reward:
        raise ValueError("reward must be a registered reward name")
    positive_ints = {
        "iterations": cfg.iterations,
        "samples_per_iter": cfg.samples_per_iter,
        "replay_size": cfg.replay_size,
        "update_epochs": cfg.update_epochs,
        "steps": cfg.steps,
        "checkpoint_every": cfg.checkpoint_every,
    }
    for name, value in positive_ints.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    for name in ("max_bad_rewards", "num_final_samples", "seed", "mu_grid"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
    if cfg.replay_size < cfg.samples_per_iter:
        raise ValueError(
            f"replay_size ({cfg.replay_size}) must be >= samples_per_iter ({cfg.samples_per_iter}): "
            "the buffer holds at least the current iteration's samples"
        )
    for name in ("lr", "drcm_lr", "clip_eps", "sigma_min", "max_log_ratio"):
        value = getattr(cfg, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    if cfg.clip_eps >= 1.0:
        raise ValueError(f"clip_eps must be in (0, 1); got {cfg.clip_eps}")
    for name in ("weight_decay", "max_grad_norm", "kl_weight", "reward_weight", "eta", "guidance"):
        value = getattr(cfg, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if not cfg.drcm_hidden or any(h < 1 for h in cfg.drcm_hidden):
        raise ValueError(f"drcm_hidden must be positive widths; got {cfg.drcm_hidden}")
    for name in ("height", "width"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 8):
            raise ValueError(f"{name} must be None (model default) or an integer >= 8; got {value!r}")
    if cfg.num_frames is not None and (not isinstance(cfg.num_frames, int) or cfg.num_frames < 1):
        raise ValueError(f"num_frames must be None (the model's) or a whole number >= 1; got {cfg.num_frames!r}")


def paper_preset() -> dict[str, Any]:
    """The paper's text (§4-5): the :class:`FindConfig` defaults."""
    return {}


def official_preset() -> dict[str, Any]:
    """The public PyTorch code's behaviour (module doc), its stale-reward bug excepted."""
    return dict(
        sigma_param="clamp",
        sigma_min=1e-4,
        logprob_reduce="mean",
        clip_eps=0.2,
        clip_mode="clamp",
        reference="initial",
        replay_size=1,
        update_epochs=1,
        drcm_text_conditioned=True,
        kl_weight=0.01,
        reward_weight=10.0,
        eta=1.0,
    )


def tiny_preset() -> dict[str, Any]:
    """``paper`` shrunk for tests and CI: few iterations and sampler steps, a small DRCM."""
    return dict(iterations=6, steps=2, drcm_hidden=(16, 16, 16), checkpoint_every=3, num_final_samples=2, replay_size=4)


# name -> the fields that preset sets on top of the FindConfig defaults
PRESETS = {"paper": paper_preset, "official": official_preset, "tiny": tiny_preset}


def get_preset(name: str = "paper", **overrides: Any) -> FindConfig:
    """The named preset (``paper``, ``official``, ``tiny``) with ``overrides`` applied to its fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(FindConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
    base = PRESETS[name]()
    base.update(overrides)
    # The public code reuses no samples: its buffer holds exactly the current ones.
    if "replay_size" not in overrides and "samples_per_iter" in overrides and name == "official":
        base["replay_size"] = overrides["samples_per_iter"]
    return FindConfig(**base)


# Fields added after run directories existed: left out of config.json (and so of the config hash) while at this
# value, so runs recorded before them resume unchanged.
_LATER_FIELDS = {"num_frames": None, "mu_grid": 0}


def config_to_dict(cfg: FindConfig) -> dict[str, Any]:
    """Plain JSON-able dict of every field (tuples become lists, reward options a dict)."""
    out = dataclasses.asdict(cfg)
    for name, default in _LATER_FIELDS.items():
        if out[name] == default:
            del out[name]
    out["reward_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.reward_options}
    out["drcm_hidden"] = list(cfg.drcm_hidden)
    return out


def config_to_json(cfg: FindConfig) -> str:
    """Stable JSON text of the config (sorted keys): ``config_from_json(config_to_json(c)) == c``."""
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=True)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(FindConfig)


def config_from_dict(data: dict[str, Any]) -> FindConfig:
    """Inverse of :func:`config_to_dict`; unknown keys or wrong types are refused with the field name."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a JSON object; got {type(data).__name__}")
    hints = _field_types()
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown} (written by another version of find-jax?)")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if key == "drcm_hidden":
            value = tuple(value)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif hint is float and not isinstance(value, float):
            raise ValueError(f"config field {key} must be a number; got {value!r}")
        elif hint in (int, bool, str) and type(value) is not hint:
            raise ValueError(f"config field {key} must be {hint.__name__}; got {value!r}")
        elif isinstance(hint, types.UnionType) and value is not None:
            allowed = tuple(a for a in typing.get_args(hint) if a is not type(None))
            if not isinstance(value, allowed) or isinstance(value, bool):
                raise ValueError(f"config field {key} must be {hint}; got {value!r}")
        kwargs[key] = value
    return FindConfig(**kwargs)


def config_from_json(text: str) -> FindConfig:
    """Parses :func:`config_to_json` output back into a :class:`FindConfig` (clear error if malformed)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config is not valid JSON: {e}") from None
    return config_from_dict(data)


def config_hash(cfg: FindConfig) -> str:
    """Short sha256 of the config's JSON text: identifies a run's configuration in checkpoints."""
    return hashlib.sha256(config_to_json(cfg).encode()).hexdigest()[:16]


def config_diff(a: FindConfig, b: FindConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (a_value, b_value)}`` for every field that differs."""
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(FindConfig)
        if getattr(a, f.name) != getattr(b, f.name)
    }


def parse_assignment(item: str, what: str = "KEY=VALUE") -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``: the command-line form of a config field or reward option.

    ``value`` is read as JSON (``3``, ``0.5``, ``true``, ``null``, ``"x"``, ``[1, 2]``) and kept as text when it
    is not JSON (``prompt=a red circle``). ``what`` names the expected form in the error.
    """
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ValueError(f"{item!r} is not {what}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value

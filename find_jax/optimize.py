"""The main job: FIND on a real (or the shipped) diffusion model, wired from a :class:`FindConfig`.

``run(config, workdir)`` loads the frozen model, builds the environment (the jitted DDIM sampler for the
prompt), the reward, and the DRCM's text condition if the preset uses one, then hands everything to
:func:`find_jax.trainer.optimize`. ``sample_from_run`` draws images from a run's learned distribution.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from find_jax.config import FindConfig, get_preset
from find_jax.models import DiffusionModel, load_model, resolve_model_dir
from find_jax.sampler import make_environment, pooled_embedding

log = logging.getLogger(__name__)

MODEL_DEFAULTS_FILE = "find_defaults.json"  # optional, in a model directory: FindConfig fields it prefers
PAPER_REWARD = "imagereward"  # the paper's reward for models that name no default


def model_defaults(model: str | None) -> dict[str, Any]:
    """Config fields a model directory recommends (``find_defaults.json``), e.g. the shipped shapes model's
    reward ``shapes`` and its 20 DDIM steps. Empty when the file is absent."""
    path = resolve_model_dir(model) / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def make_config(preset: str = "paper", **overrides: Any) -> FindConfig:
    """``preset`` + the model's recommended fields + ``overrides`` (explicit flags win).

    The reward defaults to the model's recommendation, else the paper's ImageReward.
    """
    defaults = model_defaults(overrides.get("model"))
    defaults.setdefault("reward", PAPER_REWARD)
    return get_preset(preset, **{**defaults, **{k: v for k, v in overrides.items() if v is not None}})


def build_environment(config: FindConfig, model: DiffusionModel | None = None, *, weights: str = "auto"):
    """``(model, env)`` for ``config``: the frozen model (read from the ``weights`` files, see :func:`load_model`,
    unless given) and the jitted sampler for ``config.prompt``."""
    model = model or load_model(config.model, dtype=config.dtype, weights=weights)
    env = make_environment(
        model,
        config.prompt,
        negative_prompt=config.negative_prompt,
        steps=config.steps,
        guidance=config.guidance,
        eta=config.eta,
        height=config.height,
        width=config.width,
    )
    return model, env


def run(
    config: FindConfig,
    workdir: str | Path,
    *,
    progress: bool = False,
    model: DiffusionModel | None = None,
    weights: str = "auto",
):
    """Runs (or resumes) FIND for ``config`` in ``workdir``; returns the final :class:`FindState`.

    ``model``: the loaded model to use; else ``config.model`` is loaded from its ``weights`` files."""
    from find_jax import trainer
    from reward_models import make_reward

    reward_fn = make_reward(config.reward, **dict(config.reward_options))
    model, env = build_environment(config, model, weights=weights)
    embedding = pooled_embedding(model, config.prompt) if config.drcm_text_conditioned else None
    return trainer.optimize(
        config,
        workdir,
        env_fn=env,
        reward_fn=reward_fn,
        latent_shape=env.latent_shape,
        prompt_embedding=embedding,
        model_id=model.source,
        weights_hash=model.fingerprint,
        progress=progress,
    )


def sample_from_run(
    workdir: str | Path,
    *,
    num_images: int,
    seed: int,
    prompt: str | None = None,
    batch_size: int = 8,
    model_spec: str | None = None,
    dtype: str | None = None,
    weights: str = "auto",
    **sampler_overrides: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images from the learned N(mu, sigma^2) of a FIND run: ``(images, latents, meta)``.

    The model, prompt and sampler settings are the run's unless overridden: ``model_spec`` (the run's model
    at another path; other weights only warn, another latent shape is refused), ``dtype``, ``weights``
    (which files :func:`load_model` reads), ``steps``, ``guidance``, ``eta``, ``negative_prompt``,
    ``height``/``width`` (must give the run's latent shape).
    """
    from find_jax.sampling import SampleRequest, sample_images
    from find_jax.trainer import load_state, read_run, sample_from_state

    config, record = read_run(workdir)
    state = load_state(workdir)
    dtype = dtype or config.dtype
    model = load_model(model_spec if model_spec is not None else config.model, dtype=dtype, weights=weights)
    if model.fingerprint != record.get("weights_hash", model.fingerprint):
        log.warning("the model's weights differ from the run's (%s): samples may not match", record["weights_hash"])
    fields = {k: v for k, v in sampler_overrides.items() if v is not None}
    request = SampleRequest(
        prompt=prompt or config.prompt,
        negative_prompt=fields.get("negative_prompt", config.negative_prompt),
        num_images=num_images,
        seed=seed,
        steps=fields.get("steps", config.steps),
        guidance=fields.get("guidance", config.guidance),
        eta=fields.get("eta", config.eta),
        height=fields.get("height", config.height),
        width=fields.get("width", config.width),
        batch_size=batch_size,
    )
    shape = model.latent_shape(request.height, request.width)
    if tuple(shape) != tuple(state.policy.mu.shape):
        raise ValueError(f"the run learned latents {tuple(state.policy.mu.shape)}; this size needs {shape}")
    latents = np.asarray(sample_from_state(state, jax.random.PRNGKey(seed), num_images), np.float32)
    images, latents = sample_images(model, request, latents)
    meta = {"workdir": str(workdir), "step": int(state.step), "model": model.source, "dtype": dtype, **vars(request)}
    return images, latents, meta

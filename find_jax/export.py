"""Export a learned distribution for side-by-side work with the PyTorch reference code.

``export(workdir, "npz", out)`` writes ``mu`` and ``sigma`` (float32 ``[*latent_shape]``: ``[C, h, w]`` for
images, ``[C, F, h, w]`` for video) plus ``latent_shape``,
``step`` and ``prompt`` into one ``.npz``; ``export(workdir, "pt", out)`` writes a ``torch.save`` dict
``{"mean": [1, *latent_shape], "std": [1, *latent_shape]}`` float32 CPU tensors, the layout in which the public PyTorch
code keeps its distribution (``std`` is sigma itself, not its raw parameter). torch is imported only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EXPORT_FORMATS = ("npz", "pt")


def export(
    workdir: str | Path, format: str, out: str | Path, *, step: int | None = None, overwrite: bool = False
) -> Path:
    """Writes the latest (or ``step``'s) checkpointed ``mu, sigma`` of ``workdir`` to ``out``; returns it.

    Raises ``ValueError`` for an unknown format, ``FileExistsError`` for an existing ``out`` unless ``overwrite``,
    and the errors of :func:`find_jax.rundir.load_state` for a missing, corrupt or incompatible checkpoint; all
    before anything is written. ``out``'s parent directory is created.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if format == "npz" and out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")  # np.savez would append it anyway
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    if out.exists() and out.is_dir():
        raise FileExistsError(f"--out {out} is a directory; give a file name")
    from find_jax.rundir import load_state, read_run

    config, _ = read_run(workdir)
    state = load_state(workdir, step=step)
    mu = np.asarray(state.policy.mu, np.float32)
    sigma = np.asarray(state.sigma, np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "npz":
        np.savez(
            out,
            mu=mu,
            sigma=sigma,
            latent_shape=np.asarray(mu.shape, np.int64),
            step=np.asarray(int(state.step)),
            prompt=np.asarray(config.prompt),
        )
        return out
    try:
        import torch
    except ImportError as e:
        raise ImportError("export format 'pt' needs PyTorch: pip install 'find-jax[torch]'") from e
    torch.save({"mean": torch.from_numpy(mu[None].copy()), "std": torch.from_numpy(sigma[None].copy())}, str(out))
    return out

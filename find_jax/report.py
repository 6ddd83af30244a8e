"""Pictures of a run: the reward curve (raw and smoothed, like the paper's Fig. 7) and the final samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from find_jax.metrics import read_metrics


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average (TensorBoard-style, bias-corrected) of a reward curve ``[T]``."""
    out = np.empty(len(values), dtype=np.float64)
    avg = 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def plot_reward_curve(metrics: list[dict], out: str | Path, *, title: str = "") -> Path:
    """Writes ``reward/mean`` per iteration (raw and smoothed) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in metrics if "reward/mean" in m]
    steps = np.array([m["step"] for m in rows])
    reward = np.array([m["reward/mean"] for m in rows], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    if len(rows):
        ax.plot(steps, reward, color="tab:blue", alpha=0.35, lw=1, label="reward")
        ax.plot(steps, smooth(reward), color="tab:blue", lw=2, label="smoothed (EMA 0.9)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Lays out, writes and closes a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def save_grid(images: np.ndarray, out: str | Path, *, columns: int = 8, scale: int = 1) -> Path:
    """Writes images ``[N, H, W, 3]`` in [0, 1] as one PNG grid (``scale``: nearest-neighbour upscaling); videos
    ``[N, F, H, W, 3]`` become frame strips (8 evenly spaced frames side by side), one grid cell each."""
    from PIL import Image

    images = np.asarray(images, np.float32)
    if images.ndim == 5:
        from reward_models.video_metrics import frame_strip

        images = frame_strip(images, 8)
    images = np.clip(images, 0, 1)
    n, h, w, _ = images.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = np.ones((rows * (h + 2), cols * (w + 2), 3), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = img
    pil = Image.fromarray(np.round(grid * 255).astype(np.uint8))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    out = Path(out)
    pil.save(out)
    return out


def write_run_report(workdir: str | Path) -> str:
    """``reward_curve.png`` and ``final_samples.png`` in a finished run directory; returns a one-line summary."""
    workdir = Path(workdir)
    metrics = read_metrics(workdir / "metrics.jsonl")
    from find_jax.rundir import read_run

    config, _ = read_run(workdir)
    plot_reward_curve(metrics, workdir / "reward_curve.png", title=config.prompt)
    summary = f"{len(metrics)} iterations"
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    if rewards:
        k = max(1, len(rewards) // 10)
        summary += f", reward {np.mean(rewards[:k]):+.4f} (first {k}) -> {np.mean(rewards[-k:]):+.4f} (last {k})"
    final = workdir / "final_samples.npy"
    if final.exists():
        images = np.load(final)
        columns = 1 if images.ndim == 5 else 8  # videos: one frame strip a row
        save_grid(images, workdir / "final_samples.png", columns=columns, scale=max(1, 128 // images.shape[-3]))
        fr = workdir / "final_rewards.npy"
        if fr.exists():
            summary += f"; final samples' reward {float(np.mean(np.load(fr))):+.4f}"
    return summary

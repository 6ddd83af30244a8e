"""Records the main job's results as the same-results fixture (``tests/fixtures/main_job``).

    python scripts/record_main_job.py [--out tests/fixtures/main_job]

Runs ``find-jax --cpu-devices 2 optimize --prompt "a green circle"`` (what ``make run`` runs) in a temporary
workdir and stores its final mu/sigma, final latents/rewards and every metrics line without the timings, with
the shipped model's weights hash. ``tests/test_same_results.py`` reruns the job and requires the same values.
The fixture in the repository was recorded with the code before the envs/ redesign (commit d190898); rerun
this only when the shipped model changes (the test says so), and say so in the commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

COMMAND = ["--cpu-devices", "2", "optimize", "--prompt", "a green circle", "--quiet"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="tests/fixtures/main_job", help="fixture directory")
    args = p.parse_args(argv)
    import numpy as np

    from find_jax.metrics import read_metrics
    from find_jax.rundir import load_state

    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "find_jax", *COMMAND, "--workdir", str(wd)], check=True)
        state = load_state(wd)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / "state.npz",
            mu=np.asarray(state.policy.mu),
            sigma=np.asarray(state.sigma),
            final_rewards=np.load(wd / "final_rewards.npy"),
            final_latents=np.load(wd / "final_latents.npy"),
        )
        record = json.loads((wd / "config.json").read_text())
        metrics = [
            {k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(wd / "metrics.jsonl")
        ]
        fixture = {
            "command": "find-jax " + " ".join(COMMAND),
            "weights_hash": record["weights_hash"],
            "config": record["config"],
            "metrics": metrics,
        }
        (out / "record.json").write_text(json.dumps(fixture, indent=1, sort_keys=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

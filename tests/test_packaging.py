"""The built wheel carries what an installed package reads at run time: the shipped shapes-world model (the main
job's default; ``find_jax.envs.loading``), and none of the candidate models kept beside it. The wheel is built
from a copy of the tracked sources, so a stale ``*.egg-info`` or ``build/`` in the checkout cannot fill the gap."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = "find_jax/envs/image/shapes/assets"


def _tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_wheel_holds_the_shipped_model_and_no_candidate(tmp_path):
    model = _tracked(f"{ASSETS}/shapes_model")
    assert any(p.endswith("diffusion_flax_model.msgpack") for p in model), model  # the UNet weights
    src = tmp_path / "src"
    for rel in _tracked("pyproject.toml", "README.md", "find_jax", "reward_models"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", "dist"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("find_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(model) <= names, sorted(set(model) - names)
    assert not [n for n in names if n.startswith(f"{ASSETS}/") and not n.startswith(f"{ASSETS}/shapes_model/")]

"""Runs a test script in a fresh interpreter with 4 fake CPU devices (shared by the sharding tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_on_four_devices(script: str, *args) -> dict:
    """Runs ``script`` with 4 fake CPU devices (XLA_FLAGS must precede jax's import); returns the JSON its
    last stdout line holds. A failing script fails the test with its stderr."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

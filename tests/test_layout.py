"""The package's house rules, read from the import graph of ``find_jax/`` and ``reward_models/`` (issue: one house
for two environments): no import cycle, no import from a lower layer to a higher one, no source file over 500
lines, one module that runs the iteration loop, and a loop and trainer that import no model or sampler code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("find_jax", "reward_models")

# Layers, lowest first: a module may import modules of its own layer or below (DESIGN §3: commands -> wiring ->
# loop -> envs / rewards -> pure math). Modules not listed take the layer of their package prefix.
LAYERS = {
    "find_jax.policy": 0,
    "find_jax.drcm": 0,
    "find_jax.objective": 0,
    "find_jax.replay": 0,
    "find_jax.envs": 1,
    "reward_models": 1,
    "find_jax.metrics": 1,
    "find_jax.checkpoint": 1,
    "find_jax.prompts": 1,
    "find_jax.stats": 1,
    "find_jax.config": 2,
    "find_jax.trainer": 2,
    "find_jax.rundir": 2,
    "find_jax.loop": 2,
    "find_jax.optimize": 3,
    "find_jax.sampling": 3,
    "find_jax.evaluate": 3,
    "find_jax.evaluate_shapes": 3,
    "find_jax.shapes_quality": 3,
    "find_jax.shapes_sampler": 3,
    "find_jax.export": 3,
    "find_jax.report": 3,
    "find_jax.progress": 3,
    "find_jax.interrupts": 3,
    "find_jax.testing": 1,  # tiny models written for tests (a generic test environment beside them)
    "find_jax.cli": 4,
    "find_jax.cli_args": 4,
    "find_jax.__main__": 4,
    "find_jax": 0,  # the package's own __init__ (a version string)
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _layer(name: str) -> int:
    while name not in LAYERS:
        name = name.rpartition(".")[0]
        assert name, "every module needs a layer"
    return LAYERS[name]


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        deps = _imports(name, path, known)
        # importing a submodule runs its package's __init__; that is not a dependency on the package's code
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in _graph().items()
        for d in deps
        if _layer(d) > _layer(m)
    ]
    assert not upward, upward


def test_the_loop_and_trainer_import_no_model_or_sampler_code():
    graph = _graph()
    allowed_env = {"find_jax.envs.base", "find_jax.envs.devices"}
    for m in ("find_jax.loop", "find_jax.trainer"):
        env_deps = {d for d in graph[m] if d.startswith("find_jax.envs")}
        assert env_deps <= allowed_env, (m, env_deps)
        assert not {d for d in graph[m] if d.startswith("reward_models")}, m


def test_exactly_one_module_runs_the_iteration_loop():
    """The update step is driven from one place: only the loop calls the jitted batch update and the per-iteration
    draw (the trainer defines them; the update benchmark times the update alone)."""

    def calls(text: str, fn: str) -> bool:
        return re.search(rf"(?<!def )\b{fn}\(", text) is not None

    drivers = {
        name
        for name, path in _modules().items()
        if calls(text := path.read_text(), "batch_update_jit") and calls(text, "batch_iteration_sample")
    }
    assert drivers == {"find_jax.loop"}, drivers


def test_no_private_helper_is_imported_across_modules():
    crossings = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                crossings += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not crossings, crossings

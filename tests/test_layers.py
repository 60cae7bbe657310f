"""Dependencies point one way: `keel/` at the bottom, `workflows/` and `activities/` on it (never on each
other or on the gateway), `api/` on `keel/`, and `worker.py` on top putting workflows and activities
together. Read from the source, so an arrow pointing back up fails here, not in a review.

`keel/testing.py` is the one module of `keel/` that assembles a worker, as `worker.py` does: the testing kit
runs an app's agents on a real worker. It imports workflows and activities lazily, inside that function.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LAYERS = ("keel", "workflows", "activities", "api", "worker")
# What each layer may import, besides itself.
MAY_IMPORT = {
    "keel": set(),
    "workflows": {"keel"},
    "activities": {"keel"},
    "api": {"keel"},
}
ASSEMBLERS = {"keel/testing.py": {"workflows", "activities"}}


def layer_imports(path: Path) -> set[str]:
    """The Keel layers a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {name.split(".")[0] for name in names} & set(LAYERS)
    return found


@pytest.mark.parametrize("layer", list(MAY_IMPORT))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if "scaffold_template" in name:
            continue  # a user's project, not Keel's code
        allowed = {layer} | MAY_IMPORT[layer] | ASSEMBLERS.get(name, set())
        if extra := layer_imports(path) - allowed:
            wrong[name] = sorted(extra)

    assert wrong == {}


def test_the_check_sees_an_arrow_pointing_up(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from api.sse import stream_response\n")

    assert layer_imports(module) == {"api"}

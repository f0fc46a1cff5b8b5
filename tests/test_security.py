"""No module of kvtier deserializes with pickle or marshal, or runs text as code (eval, exec, compile):
KV objects, configs and requests are data, parsed by code that can only fail with a typed error."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kvtier"
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "cloudpickle", "shelve"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}


def offences(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            found += [f"{name}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{name}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BANNED_CALLS:
            found.append(f"{name}:{node.lineno} {node.func.id}(...)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            found.append(f"{name}:{node.lineno} torch.load (pickle)")
    return found


def test_no_module_unpickles_or_evaluates() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 50
    found = [o for path in sources for o in offences(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert found == []


@pytest.mark.parametrize("source", ["import pickle", "from marshal import loads", "eval('1')", "exec(x)",
                                    "import torch\ntorch.load(f)", "import pickle as p"])
def test_the_scan_catches_each_kind(source: str) -> None:
    assert offences(source, "x.py")

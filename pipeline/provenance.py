"""The source files a stage runs, found from its imports, and a digest of them.

A stage's code is the closure of the ``pipeline`` modules it imports, directly or through
other modules, wherever the import statement stands (a function-level import counts:
it runs when that function does). ``dvc.yaml`` must list that closure as the stage's
deps (a test derives it and compares), and a stage that reuses its persisted outputs
(render's shards, train's checkpoints) keeps :func:`code_digest` in their fingerprint,
so changed code rebuilds them rather than passing old results off as new.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "pipeline"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(module: str) -> Path | None:
    """The source file of ``pipeline.a.b``, or None for a name that is not a module
    (``from pipeline.params import Params`` imports a class, not a module)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Names of the pipeline modules ``path`` may import, and their packages. Imports under
    ``if TYPE_CHECKING:`` are left out: that code never runs."""
    names = set()
    pending = list(ast.parse(path.read_text(), str(path)).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending += node.orelse
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        pending += ast.iter_child_nodes(node)
    found = set()
    for name in names:
        parts = name.split(".")
        # importing pipeline.a.b runs pipeline/__init__.py and pipeline/a/__init__.py first
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {name for name in found if module_file(name) is not None}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.cache
def closure(module: str) -> tuple[Path, ...]:
    """Every pipeline source file that running ``python -m <module>`` can execute, sorted."""
    pending, seen = [module, PACKAGE], set()
    while pending:
        name = pending.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        pending += sorted(_imports(module_file(name)))
    return tuple(sorted(module_file(name) for name in seen))


def repo_relative(path: Path) -> str:
    """``pipeline/stages/render.py``: a closure file as dvc.yaml names it."""
    return path.relative_to(PACKAGE_DIR.parent).as_posix()


@functools.cache
def code_digest(module: str) -> str:
    """SHA-256 over the names and bytes of :func:`closure` of ``module``."""
    digest = hashlib.sha256()
    for path in closure(module):
        digest.update(repo_relative(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()

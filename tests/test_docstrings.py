"""Docstring examples: every public function and class shows one, and every example runs.

The examples run as doctests in a temporary working folder, with the session's cache and index
folders.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import mlcast_pipes

MODULES: list[str] = sorted(
    m.name for m in pkgutil.walk_packages(mlcast_pipes.__path__, "mlcast_pipes.")
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public_objects(module: ModuleType) -> list[tuple[str, object]]:
    """Functions and classes a module defines and does not mark private."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    out = []
    for name in names:
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported from elsewhere: checked where it is defined
        out.append((name, obj))
    return out


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's doctests pass (run in a fresh folder so that files they write go away)."""
    module = importlib.import_module(name)
    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, name, globs={**vars(module)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


@pytest.mark.parametrize("name", MODULES)
def test_public_api_has_examples(name: str) -> None:
    """Every public function and class has a docstring with an ``Examples`` section."""
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    missing = [
        qual for qual, obj in _public_objects(module) if ">>>" not in (inspect.getdoc(obj) or "")
    ]
    assert not missing, f"{name}: public items without a runnable example: {missing}"


def test_doctests_see_isolated_folders() -> None:
    """Examples that generate demo data write into the test session's folders, not the user's."""
    assert "mlcast-pipes-tests-" in os.environ["MLCAST_PIPES_CACHE"]

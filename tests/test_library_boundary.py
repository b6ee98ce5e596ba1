"""``moc`` is a library apart from its lab: no ``moc`` module imports ``moc_experiments``, not even lazily.

The experiments have their own command (``moc-lab``, :mod:`moc_experiments.cli`); ``moc``'s CLI only
points to it. The import checks run in a fresh interpreter, since this test session has long since
imported ``moc_experiments`` through other tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import moc

# Imports every module of ``moc`` (not ``__main__``, which would run the CLI), builds the CLI parser,
# resolves a run preset through ``moc config show`` and runs a moved command's pointer; then prints
# whatever of moc_experiments got loaded.
_IMPORT_ALL = """
import contextlib, importlib, io, pkgutil, sys
import moc
names = [m.name for m in pkgutil.walk_packages(moc.__path__, "moc.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
from moc.cli import build_parser, main
build_parser()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    assert main(["config", "show", "tiny-moc"]) == 0
    assert main(["demo", "--seeds", "2"]) == 2
print(len(names))
print(sorted(k for k in sys.modules if k.split(".")[0] == "moc_experiments"))
"""

# The lab's command finds its own package and the library's run configs.
_LAB_COMMAND = """
import contextlib, io, sys
from moc_experiments.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["config", "show", "smoke"]) == 0
print("moc_experiments.experiment.protocol.config" in sys.modules)
"""


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_moc_never_imports_the_lab() -> None:
    n_modules, loaded = _run(_IMPORT_ALL)
    assert int(n_modules) > 30  # the walk really covered the package (model, train, hf, cli, ...)
    assert loaded == "[]", f"moc imported its lab: {loaded}"


def test_no_moc_source_imports_the_lab() -> None:
    """Also the imports inside functions, which the import walk above would not run, and module names
    given as strings (``importlib.import_module("moc_experiments...")``)."""
    offenders = []
    for path in sorted(Path(moc.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            else:
                continue
            lab = [n for n in names if n == "moc_experiments" or n.startswith("moc_experiments.")]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in lab]
    assert offenders == []


def test_the_lab_command_runs_its_own_configs() -> None:
    assert _run(_LAB_COMMAND) == ["True"]

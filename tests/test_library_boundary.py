"""``moc`` is a library apart from its demo application: no ``moc`` module imports ``moc_experiments``.

Only the CLI subcommands that run the demo (``moc experiment / demo / report``, and ``moc config`` for
an experiment preset) import it, lazily, inside the command. Each check runs in a fresh interpreter,
since this test session has long since imported ``moc_experiments`` through other tests.
"""

from __future__ import annotations

import subprocess
import sys

# Imports every module of ``moc`` (not ``__main__``, which would run the CLI), builds the CLI parser and
# resolves a run preset through ``moc config show``; then prints whatever of moc_experiments got loaded.
_IMPORT_ALL = """
import contextlib, importlib, io, pkgutil, sys
import moc
names = [m.name for m in pkgutil.walk_packages(moc.__path__, "moc.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
from moc.cli import build_parser, main
build_parser()
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["config", "show", "tiny-moc"]) == 0
print(len(names))
print(sorted(k for k in sys.modules if k.split(".")[0] == "moc_experiments"))
"""

# The demo's commands still find the package once they run (lazily).
_DEMO_COMMAND = """
import contextlib, io, sys
from moc.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["config", "show", "smoke"]) == 0
print("moc_experiments.experiment.config" in sys.modules)
"""


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_moc_never_imports_the_demo_application() -> None:
    n_modules, loaded = _run(_IMPORT_ALL)
    assert int(n_modules) > 30  # the walk really covered the package (model, train, hf, cli, ...)
    assert loaded == "[]", f"moc imported its demo application: {loaded}"


def test_demo_commands_load_it_lazily() -> None:
    assert _run(_DEMO_COMMAND) == ["True"]

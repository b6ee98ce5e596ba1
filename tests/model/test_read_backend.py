"""Which read runs (moc.model.read_backend): the compiled CPU read's choice of the C kernels is decided
while tracing, without a graph break, and importing the model does not import the compiler."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from moc.model import read_backend


def test_the_c_kernels_are_chosen_for_small_reads_in_supported_dtypes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(read_backend, "_CPU_COMPILER", True)
    run = read_backend.cpu_kernels_run
    assert run(torch.float32, 8, 16, "auto") and run(torch.float64, 16, 16, "auto")
    assert not run(torch.float32, 32, 64, "auto")  # a tile too large: the PyTorch path's products
    assert not run(torch.bfloat16, 8, 16, "auto") and not run(torch.float32, 8, 12, "auto")
    assert not run(torch.float32, 8, 16, "torch")  # memory.kernel: torch
    monkeypatch.setattr(read_backend, "_CPU_COMPILER", False)
    assert not run(torch.float32, 8, 16, "auto")


def test_the_choice_traces_as_a_constant() -> None:
    def read_path(x: torch.Tensor) -> torch.Tensor:
        if read_backend.cpu_kernels_run(x.dtype, 8, 16, "auto"):
            return x + 1
        return x - 1

    torch._dynamo.reset()
    compiled = torch.compile(read_path, backend="eager", fullgraph=True)  # a graph break would raise
    x = torch.zeros(3)
    torch.testing.assert_close(compiled(x), read_path(x))
    torch._dynamo.reset()


def test_importing_moc_does_not_import_the_compiler() -> None:
    """torch._dynamo takes about a second to import: every `moc` command would pay it."""
    code = "import sys, moc, moc.model, moc.train, moc.cli; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

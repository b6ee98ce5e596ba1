"""``moc export``: a self-contained folder that loads with trust_remote_code and no moc installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers import AutoModelForCausalLM

from moc.hf import HFError, export
from moc.hf.export import core_model_files
from moc.model import layers
from moc.model.memory import MemoryLayer

# Runs in a fresh interpreter in which `import moc` fails, as on a machine without moc installed.
ISOLATED = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockMoc(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "moc" or name.startswith("moc."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockMoc())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, ids_file, out_file = sys.argv[1:4]
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # it reads config.json too
    with torch.no_grad():
        logits = model(torch.load(ids_file)).logits
        enc = tok(["The capital of", "Paris"], return_tensors="pt", padding=True, padding_side="left")
        gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    torch.save(logits, out_file)
    print(json.dumps({
        "class": type(model).__module__ + "." + type(model).__name__,
        "moc_loaded": any(m == "moc" or m.startswith("moc.") for m in sys.modules),
        "new_tokens": gen.shape[1] - enc["input_ids"].shape[1],
    }))
    """
)


def test_export_loads_without_moc_installed(make_checkpoint, tmp_path: Path) -> None:
    ckpt, core = make_checkpoint("memory.routing=causal", "memory.causal_chunk_size=4")
    out = export(ckpt, tmp_path / "export")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert {"configuration_moc.py", "modeling_moc.py"} | {p.name for p in core_model_files()} <= names
    assert "from ..model" not in (out / "modeling_moc.py").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_moc.MoCForCausalLM"
    assert config["eos_token_id"] == 0 and config["memory_layers"] == [1, 3]
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 128

    ids = torch.randint(0, 320, (2, 17))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        expected = core(ids).logits
        # Without moc the folder reads with its copy of the PyTorch loops and normalises with F.rms_norm:
        # the same bits as moc's model with memory.kernel: torch and no C norm kernels (moc's defaults on
        # the CPU, its C kernels, round differently).
        read_by = {m: m.cfg.kernel for m in core.modules() if isinstance(m, MemoryLayer)}
        for m in read_by:
            m.cfg.kernel = "torch"
        with mock.patch.object(layers, "_cpu_norm", None):
            expected_loops = core(ids).logits
        for m, kernel in read_by.items():
            m.cfg.kernel = kernel
    torch.testing.assert_close(expected_loops, expected, rtol=1e-5, atol=1e-6)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(
        [sys.executable, "-c", ISOLATED, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["class"].startswith("transformers_modules.") and info["class"].endswith("MoCForCausalLM")
    assert not info["moc_loaded"] and info["new_tokens"] == 4
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected_loops)

    # In a process with moc, the remote code loads too (next to moc's own registered class).
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(remote(ids).logits, expected)


def test_export_without_a_tokenizer_is_an_error_naming_the_fix(make_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = make_checkpoint(tokenizer=False)
    with pytest.raises(HFError, match=r"no tokenizer found for .*ckpt.*--tokenizer DIR"):
        export(ckpt, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    out = export(ckpt, tmp_path / "b", no_tokenizer=True)
    assert (out / "model.safetensors").is_file() and not (out / "tokenizer.json").exists()
    with pytest.raises(HFError, match="tokenizer folder .*missing.* does not exist"):
        export(ckpt, tmp_path / "c", tokenizer=tmp_path / "missing")


def test_export_refuses_a_tokenizer_larger_than_the_vocabulary(make_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = make_checkpoint("model.vocab_size=256")  # the test tokenizer has 300 tokens
    with pytest.raises(
        HFError, match=r"vocabulary mismatch: tokenizer .* has 300 tokens .* vocabulary is 256"
    ):
        export(ckpt, tmp_path / "out")


def test_export_does_not_overwrite_unless_forced(make_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = make_checkpoint()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(HFError, match="not empty.*--force"):
        export(ckpt, out)
    with pytest.raises(HFError, match="not a moc export"):  # --force replaces only an earlier export
        export(ckpt, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    export(ckpt, out)
    (out / "stale.txt").write_text("x")
    export(ckpt, out, overwrite=True, dtype=torch.bfloat16)
    assert not (out / "stale.txt").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16


def test_exported_code_imports_only_torch_transformers_and_the_stdlib(tmp_path: Path) -> None:
    from transformers.dynamic_module_utils import get_imports

    from moc.hf.export import write_model_code

    allowed = set(sys.stdlib_module_names) | {"__future__", "torch", "transformers"}
    for name in write_model_code(tmp_path):
        assert set(get_imports(tmp_path / name)) <= allowed, name

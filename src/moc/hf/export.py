"""``moc export``: a training checkpoint -> a self-contained Hugging Face model folder.

The folder holds ``config.json`` (with ``auto_map``), ``model.safetensors``, ``generation_config.json``,
the tokenizer files, and the model code (``configuration_moc.py``, ``modeling_moc.py`` and moc's core
``transformer.py``, ``memory.py``, ``bank.py``, ``router.py``, ``routing_layout.py``, ``read_backend.py``,
``layers.py``, ``loss.py``, ``param_groups.py``, and the memory read's kernel ``routed_read.py`` from
``moc/kernels``: whatever ``transformer.py`` imports relatively), so that anyone can run::

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

without installing moc. The folder is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

import moc
from moc.errors import one_line, os_error_message
from moc.files import apply_umask
from moc.hf.convert import (
    check_tokenizer_fits,
    is_hf_folder,
    load_given_tokenizer,
    load_model,
    resolve_tokenizer,
)
from moc.hf.errors import HFError
from moc.hf.modeling_moc import MoCForCausalLM

HF_DIR = Path(__file__).parent
MODEL_DIR = HF_DIR.parent / "model"
KERNEL_DIR = HF_DIR.parent / "kernels"  # the memory read's PyTorch kernel, imported by read_backend.py
AUTO_MAP = {
    "AutoConfig": "configuration_moc.MoCConfig",
    "AutoModelForCausalLM": "modeling_moc.MoCForCausalLM",
}
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", flags=re.MULTILINE)
_CORE_IMPORT = "from ..model."
# Files only a training run or checkpoint holds (an export never does).
_RUN_MARKERS = ("config.yaml", "metrics.jsonl", "trainer_state.pt", "optimizer.pt", "manifest.json")


def core_model_files(entry: str = "transformer.py") -> list[Path]:
    """``moc/model`` files the network needs: ``entry`` and what it imports relatively, recursively
    (a name missing from ``moc/model`` comes from ``moc/kernels``: read_backend.py's fallback import)."""
    seen: list[Path] = []
    todo = [MODEL_DIR / entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        names = _RELATIVE_IMPORT.findall(path.read_text())
        todo += [d / f"{n}.py" for n in names for d in (MODEL_DIR, KERNEL_DIR) if (d / f"{n}.py").exists()]
    return sorted(seen)


def write_model_code(out_dir: Path) -> list[str]:
    """Copy the model code into ``out_dir``; ``modeling_moc.py``'s ``..model.`` imports become ``.``."""
    names = []
    for path in core_model_files():
        shutil.copyfile(path, out_dir / path.name)
        names.append(path.name)
    shutil.copyfile(HF_DIR / "configuration_moc.py", out_dir / "configuration_moc.py")
    modeling = (HF_DIR / "modeling_moc.py").read_text()
    if _CORE_IMPORT not in modeling:
        raise RuntimeError("modeling_moc.py no longer imports the core model via `from ..model.`")
    (out_dir / "modeling_moc.py").write_text(modeling.replace(_CORE_IMPORT, "from ."))
    return ["configuration_moc.py", "modeling_moc.py", *names]


def _model_card(model: MoCForCausalLM, source: str) -> str:
    c = model.config
    kind = (
        f"{len(c.memory_layers)} memory layers, {c.memory['routing']} routing" if c.memory_layers else "dense"
    )
    return (
        f"# {c.moc_name}\n\n"
        f"A Mixture-of-Chapters language model exported by moc {moc.__version__} from `{source}` "
        f"({model.num_parameters():,} parameters, {c.num_hidden_layers} layers, {kind}).\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)\n"
        "tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)  # reads config.json\n"
        "```\n"
    )


def export(
    checkpoint: str | Path | MoCForCausalLM,
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    no_tokenizer: bool = False,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a self-contained Hugging Face folder for ``checkpoint`` (a training checkpoint, run dir,
    Hugging Face folder, or a loaded ``MoCForCausalLM``). Returns ``out_dir``.

    ``tokenizer``: a tokenizer folder (or object); by default the one found with the checkpoint (see
    :func:`moc.hf.convert.resolve_tokenizer`). ``no_tokenizer`` exports the model alone.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HFError(f"{out} is a file, not a folder; choose another folder (--force replaces a folder)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HFError(f"{out} exists and is not empty; choose another folder or pass --force to replace it")
    if isinstance(checkpoint, MoCForCausalLM):
        model, source_name = checkpoint, getattr(checkpoint.config, "name_or_path", "") or "a model object"
        source = None
    else:
        model, source = load_model(checkpoint, dtype=dtype)
        source_name = str(source.path)
    refuse_to_replace(out, source.path if source is not None else None)
    tok = None
    if not no_tokenizer:
        if source is None and tokenizer is None:
            raise HFError("exporting a model object needs tokenizer=DIR (or no_tokenizer=True)")
        tok = resolve_tokenizer(source, tokenizer) if source is not None else load_given_tokenizer(tokenizer)
        check_tokenizer_fits(tok, model.config.vocab_size)
    if dtype is not None:
        model = model.to(dtype)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        try:
            _write(model, tok, tmp, source_name)
        except (OSError, SafetensorError) as e:  # disk full, permissions: nothing partial is left behind
            why = os_error_message(e) if isinstance(e, OSError) else one_line(e)
            raise HFError(f"could not write the export {out}: {why}; {out} was not changed") from None
        apply_umask(tmp)  # mkdtemp makes 0700 and safetensors 0600; give the usual modes
        # Swap with renames only, so a failure never leaves neither the old nor the new folder.
        old = out.with_name(f".tmp-old-{out.name}-{tmp.name[-8:]}") if out.exists() else None
        if old is not None:
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def refuse_to_replace(out: Path, source: Path | None) -> None:
    """``--force`` replaces an earlier export only. Raise :class:`HFError` when ``out`` holds anything
    else (a training run, a checkpoint, the model being exported, the working folder, other files):
    replacing it would delete work that no command can rebuild."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    here, target = Path.cwd().resolve(), out.resolve()
    fix = "choose a new folder for the export (--force only replaces an earlier export)"
    if target == here or target in here.parents:
        raise HFError(f"{out} is the working folder (or holds it); {fix}")
    if source is not None and (source.resolve() == target or target in source.resolve().parents):
        raise HFError(f"{out} holds the model being exported ({source}); {fix}")
    if (out / "checkpoints").is_dir() or any((out / name).exists() for name in _RUN_MARKERS):
        raise HFError(f"{out} is a training run or checkpoint, not an export; {fix}")
    if not is_hf_folder(out):
        raise HFError(f"{out} holds files that are not a moc export (no moc config.json); {fix}")


def _write(model: MoCForCausalLM, tok: Any, out: Path, source_name: str) -> None:
    config = model.config
    previous_auto_map = getattr(config, "auto_map", None)
    config.auto_map = dict(AUTO_MAP)
    config.architectures = [MoCForCausalLM.__name__]
    gen = model.generation_config
    if tok is not None:
        from moc.hf.generation import chat_stop_ids

        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(config, key, getattr(tok, key))
        stops = chat_stop_ids(tok)
        gen.bos_token_id, gen.pad_token_id = tok.bos_token_id, tok.pad_token_id
        gen.eos_token_id = stops if len(stops) > 1 else tok.eos_token_id
    model.save_pretrained(str(out))
    write_model_code(out)
    if tok is not None:
        max_len = tok.model_max_length
        tok.model_max_length = config.max_position_embeddings  # lm-eval and pipelines truncate to it
        try:
            tok.save_pretrained(str(out))
        finally:
            tok.model_max_length = max_len
    (out / "README.md").write_text(_model_card(model, source_name))
    config.auto_map = previous_auto_map  # the in-memory model stays a plain moc model

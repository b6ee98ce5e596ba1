"""Atomic, resumable checkpoints: one directory per step, written to a temp dir and renamed into place.

Layout of ``OUT_DIR/checkpoints/``::

    step_000123/
        model.safetensors   full (unsharded) weights; shared tensors stored once, aliases in metadata
        optimizer.pt        full optimizer state, keyed by parameter name (any world size can load it)
        trainer_state.pt    step, scheduler, RNG states, data-sampler position, counters
        config.yaml         the run's full config
        metrics.json        metrics at this step (train loss, val loss if evaluated)
        tokenizer/          a copy of the run's tokenizer, so generate/export work from anywhere
        manifest.json       size and sha256 of every other file, written last
    latest                  name of the newest complete checkpoint (atomically replaced)
    best                    name of the checkpoint with the lowest validation loss

A checkpoint directory only ever appears under its final name after every file in it was written and
fsynced, so a crash or SIGKILL mid-save leaves at worst a ``.tmp-*`` directory, which is ignored and
cleaned up; a save that fails (disk full) removes its temp dir and raises naming the problem, leaving
the earlier checkpoints as they were. Pruning keeps the last ``keep_last`` checkpoints plus the best.

A file damaged later (truncated by a copy, a bad disk) is caught by :func:`verify_checkpoint` against
the manifest: ``--resume`` names the bad file and falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from moc.errors import one_line, os_error_message
from moc.files import apply_umask, sha256_file
from moc.train.errors import CheckpointError

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.pt"
CONFIG = "config.yaml"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
REQUIRED_FILES = (WEIGHTS, OPTIMIZER, TRAINER_STATE, CONFIG, METRICS)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_ALIASES_KEY = "moc_aliases"
# Config sections that define the network: a checkpoint only fits a model with the same values.
MODEL_SECTIONS = ("model", "memory")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def step_of_dir(ckpt: Path) -> int | None:
    """The step a ``step_NNNNNN`` folder was saved at; None for any other name (a renamed copy)."""
    m = _STEP_DIR.match(ckpt.name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------------
# Files: fsync and atomic replace
# --------------------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _remove_dir(path: Path) -> None:
    """Rename then delete, so a crash mid-delete never leaves a half-empty ``step_*`` directory."""
    trash = path.with_name(f".tmp-trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Weights: shared tensors stored once
# --------------------------------------------------------------------------------------------------


def shared_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: canonical}`` for parameters/buffers reachable under several names (tied embeddings,
    a bank shared by several layers). The canonical name is the first in ``named_parameters`` order."""
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


def save_weights(state: dict[str, torch.Tensor], path: Path, aliases: dict[str, str]) -> None:
    """Save a full state dict with safetensors; aliased names are dropped and listed in the metadata."""
    aliases = {a: c for a, c in aliases.items() if a in state and c in state}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in aliases}
    save_file(tensors, str(path), metadata={_ALIASES_KEY: json.dumps(aliases)})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load what :func:`save_weights` wrote, with every alias restored (pointing at the same tensor).

    A truncated or otherwise unreadable file raises :class:`CheckpointError` naming it."""
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(_damaged(path, one_line(e))) from None
    for alias, canonical in json.loads(meta.get(_ALIASES_KEY, "{}")).items():
        state[alias] = state[canonical]
    return state


def check_state_fits(
    model_state: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], source: str
) -> None:
    """Raise naming the missing, unexpected and wrongly-shaped keys if ``loaded`` cannot load."""
    missing = sorted(set(model_state) - set(loaded))
    unexpected = sorted(set(loaded) - set(model_state))
    shapes = sorted(
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in set(model_state) & set(loaded)
        if tuple(loaded[k].shape) != tuple(model_state[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
            parts.append(f"{label}: {', '.join(items[:8])}{more}")
    raise CheckpointError(
        f"the weights in {source} do not fit this model ({'; '.join(parts)}); "
        "use a checkpoint trained with the same model/memory config"
    )


def load_torch_file(path: Path) -> Any:
    """``torch.load`` of an optimizer or trainer-state file (tensors and plain data only), raising
    :class:`CheckpointError` naming the file when it is missing, truncated or not a torch file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointError(_damaged(path, one_line(e))) from None


def check_trainer_state_step(ckpt: Path, saved_step: int) -> None:
    """Refuse a ``trainer_state.pt`` whose step is not its folder's: one copied in from another
    checkpoint would silently rewind (or skip) the schedule, the data position and the step counter,
    and the manifest cannot catch it when the copy came with its own manifest or none."""
    folder_step = step_of_dir(ckpt)
    if folder_step is None or saved_step == folder_step:
        return
    raise CheckpointError(
        f"{ckpt / TRAINER_STATE} holds the trainer state of step {saved_step}, but it sits in {ckpt.name} "
        f"(step {folder_step}): it was copied from another checkpoint. Put back the {TRAINER_STATE} saved "
        f"with {ckpt.name}, or move {ckpt.name} out of {ckpt.parent} so --resume continues from the "
        "checkpoint before it"
    )


def check_optimizer_layout(path: Path, state: Any) -> None:
    """Refuse a file that torch can read but that is no optimizer state dict (saved by something else)."""
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
            and isinstance(state.get("param_groups"), list)
            and all(isinstance(g, dict) for g in state["param_groups"])):  # fmt: skip
        raise CheckpointError(
            f"{path} is not a moc optimizer state (no 'state' and 'param_groups'); {_optimizer_fix(path)}"
        )


def _optimizer_fix(path: Path) -> str:
    return (
        f"put back the {OPTIMIZER} saved with {path.parent.name}, or start a new out_dir "
        f"(--init-from {path.parent} keeps the weights)"
    )


def check_optimizer_fits(
    path: Path,
    state: Any,
    shapes: dict[str, tuple[int, ...]],
    group_sizes: list[int],
    updates: int,
) -> None:
    """Refuse an ``optimizer.pt`` that does not belong to this run, before torch fails on it mid-step.

    ``state`` is what :func:`load_torch_file` read (``{"state": {name: {...}}, "param_groups": [...]}``,
    keyed by parameter name); ``shapes`` maps this model's parameter names (aliases included) to shapes;
    ``group_sizes`` counts the parameters of each of this run's optimizer groups; ``updates`` is the
    number of optimizer steps the trainer state says were taken (steps minus skipped non-finite ones).
    Checked: the file's layout, its parameter names and moment shapes (an optimizer of another model
    loads without complaint and breaks AdamW's first update with a bare shape error), and its step
    count (another run of the same model loads and trains on, silently mixing two runs' moments).
    """
    check_optimizer_layout(path, state)
    fix = _optimizer_fix(path)
    saved_sizes = [len(g.get("params", [])) for g in state["param_groups"]]
    problems = []
    unknown = sorted(n for n in state["state"] if n not in shapes)
    if unknown:
        problems.append(f"parameters this model does not have: {_first(unknown)}")
    wrong = sorted(
        f"{name}: file {tuple(t.shape)} vs model {shapes[name]}"
        for name, entry in state["state"].items()
        if name in shapes and isinstance(entry, dict)
        for t in [entry.get("exp_avg")]
        if isinstance(t, torch.Tensor) and tuple(t.shape) != shapes[name]
    )
    if wrong:
        problems.append(f"shapes differ: {_first(wrong)}")
    if not problems and saved_sizes != group_sizes:
        problems.append(f"parameters per group: file {saved_sizes} vs this run {group_sizes}")
    if problems:
        raise CheckpointError(
            f"{path} does not fit this model ({'; '.join(problems)}): it comes from another run; {fix}"
        )
    steps = [
        int(entry["step"])
        for entry in state["state"].values()
        if isinstance(entry, dict) and isinstance(entry.get("step"), torch.Tensor | int | float)
    ]
    # The most-updated parameter (the output layer gets a gradient every step) counts the updates taken.
    if steps and max(steps) != updates:
        raise CheckpointError(
            f"{path} has taken {max(steps)} optimizer steps, but the trainer state of {path.parent.name} "
            f"took {updates}: it was copied from another checkpoint or run; {fix}"
        )


def _first(items: list[str], n: int = 4) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _damaged(path: Path, problem: str) -> str:
    return (
        f"{path} is damaged or not a moc checkpoint file ({problem}); resume from an earlier checkpoint "
        "(--resume picks the newest one that verifies) or copy the file again"
    )


# --------------------------------------------------------------------------------------------------
# Manifest: sizes and hashes recorded at save time
# --------------------------------------------------------------------------------------------------


def _files_of(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(ckpt: Path) -> None:
    """Record the size and sha256 of every file of ``ckpt`` (relative paths) in ``manifest.json``."""
    files = {
        str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _files_of(ckpt)
    }
    (ckpt / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")


def verify_checkpoint(ckpt: Path, hashes: bool = True) -> None:
    """Check ``ckpt`` against its manifest (sizes, and sha256 if ``hashes``); raise
    :class:`CheckpointError` naming the first missing, truncated or changed file. A checkpoint written
    before manifests existed only needs its required files."""
    problem = _verify_problem(ckpt, hashes)
    if problem:
        raise CheckpointError(
            f"{problem}; use an earlier checkpoint (--resume skips damaged ones) or copy it again"
        )


def _verify_problem(ckpt: Path, hashes: bool) -> str | None:
    missing = [f for f in REQUIRED_FILES if not (ckpt / f).is_file()]
    if missing:
        return f"checkpoint {ckpt} is incomplete: {', '.join(missing)} missing"
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest_path} is damaged ({one_line(e)})"
    for name, rec in files.items():
        p = ckpt / name
        if not p.is_file():
            return f"{p} is missing (listed in {manifest_path})"
        size = p.stat().st_size
        if size != rec["bytes"]:
            return f"{p} has {size:,} bytes but {rec['bytes']:,} were saved (truncated or overwritten)"
        if hashes and sha256_file(p) != rec["sha256"]:
            return f"{p} does not match the sha256 recorded when it was saved (corrupted)"
    return None


# --------------------------------------------------------------------------------------------------
# Config compatibility
# --------------------------------------------------------------------------------------------------


def config_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``section.key: checkpoint X vs config Y`` for every model/memory key that differs.

    Keys missing on one side count as their default (configs written by older versions still load);
    the memory settings of two dense models (memory.enabled false) are irrelevant and not compared.
    """
    from moc.config import RunConfig

    defaults = RunConfig().to_dict()
    out = []
    for section in MODEL_SECTIONS:
        a = {**defaults[section], **(saved.get(section) or {})}
        b = {**defaults[section], **(current.get(section) or {})}
        if section == "memory" and not a["enabled"] and not b["enabled"]:
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key}: checkpoint {a.get(key)!r} vs config {b.get(key)!r}")
    return out


def read_checkpoint_config(ckpt_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's ``config.yaml`` as a mapping, None if it has none (a bare weights folder).

    An empty, unreadable or malformed file raises :class:`CheckpointError` naming it: read as "no
    keys", an empty file would stand for the 148M-parameter defaults, and every later message would
    blame the weights (missing layers, a dozen mismatched keys) instead of the file."""
    from moc.configio import safe_load_bounded

    path = ckpt_dir / CONFIG
    if not path.exists():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise CheckpointError(_bad_config(path, f"cannot be read ({os_error_message(e)})")) from None
    except UnicodeDecodeError as e:
        raise CheckpointError(
            _bad_config(path, f"is not UTF-8 text (bad byte at offset {e.start})")
        ) from None
    if not text.strip():
        raise CheckpointError(_bad_config(path, "is empty"))
    try:
        saved = safe_load_bounded(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise CheckpointError(_bad_config(path, f"is not valid YAML{at} ({problem})")) from None
    except ValueError as e:  # ConfigError: nested too deep or too big to be a config
        raise CheckpointError(_bad_config(path, f"is not a config ({one_line(e)})")) from None
    if not isinstance(saved, dict):
        raise CheckpointError(
            _bad_config(path, f"holds a {type(saved).__name__}, not a mapping of config sections")
        )
    return saved


def _bad_config(path: Path, problem: str) -> str:
    """``path`` (a checkpoint's config.yaml) ``problem``, so the network cannot be rebuilt; and the fix:
    the run folder's own config.yaml (written by the same run) when it is there."""
    run_config = path.parent.parent.parent / CONFIG  # OUT_DIR/checkpoints/step_N/config.yaml -> OUT_DIR/
    in_run = path.parent.parent.name == "checkpoints" and run_config.is_file()
    source = f"{run_config} (the run's config)" if in_run else "another checkpoint of the same run"
    return (
        f"{path} {problem}, so the model it was trained with is unknown; copy the config back from {source}"
    )


def check_config_compatible(ckpt_dir: Path, current: dict[str, Any]) -> None:
    """Raise if the checkpoint's config.yaml describes a different network than ``current``."""
    saved = read_checkpoint_config(ckpt_dir)
    if saved is None:
        return  # a bare weights file: the state-dict check still catches shape mismatches
    bad = config_mismatches(saved, current)
    if bad:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} was trained with a different model config: {'; '.join(bad)}. "
            "Load it with the same model/memory settings (or start a new out_dir)"
        )


# --------------------------------------------------------------------------------------------------
# Directory management
# --------------------------------------------------------------------------------------------------


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in REQUIRED_FILES)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint dir, a run's out_dir, its checkpoints/ dir, or a
    ``model.safetensors`` file (returned as is).

    A checkpoint dir given by name is verified against its manifest (a damaged one raises, naming the
    file); for a run dir it is the newest checkpoint that verifies, with a warning for each skipped."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        return p
    if (p / WEIGHTS).is_file():
        if (p / MANIFEST).is_file():
            verify_checkpoint(p)
        return p
    for root in (p / "checkpoints", p):
        latest = CheckpointManager(root).latest_verified(warn=_warn)
        if latest is not None:
            return latest
    raise CheckpointError(
        f"no checkpoint found at {p}: pass a checkpoint directory (containing {WEIGHTS}), "
        "a run's out_dir, or a .safetensors file"
    )


class CheckpointManager:
    """Writes, finds and prunes the checkpoints of one run (call only on the main process)."""

    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        self.root = Path(root)  # usually OUT_DIR/checkpoints
        self.keep_last = keep_last

    def complete_steps(self) -> list[tuple[int, Path]]:
        """``(step, dir)`` of every complete checkpoint, oldest first; temp dirs are ignored."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and is_complete(child):
                found.append((int(m.group(1)), child))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint (the ``latest`` pointer is for people; we trust the dirs)."""
        steps = self.complete_steps()
        return steps[-1][1] if steps else None

    def latest_verified(self, warn: Callable[[str], None] | None = None) -> Path | None:
        """The newest complete checkpoint that passes :func:`verify_checkpoint`; each damaged newer one
        is reported through ``warn`` (naming the bad file) and skipped. None if none verifies."""
        for _, ckpt in reversed(self.complete_steps()):
            try:
                verify_checkpoint(ckpt)
            except CheckpointError as e:
                if warn is not None:
                    warn(f"skipping damaged checkpoint {ckpt.name}: {e}")
                continue
            return ckpt
        return None

    def best(self) -> Path | None:
        scored = [(v, s, p) for s, p in self.complete_steps() if (v := _val_loss(p)) is not None]
        return min(scored)[2] if scored else None

    def clean_temp(self) -> None:
        """Remove leftovers of interrupted saves or deletions."""
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.name.startswith(".tmp-") and child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Run ``write(tmp_dir)`` to fill a temp dir, record its manifest, fsync it, rename it to
        ``step_NNNNNN``, update the ``latest``/``best`` pointers and prune. Returns the final path.

        If writing fails (disk full, permissions) the temp dir is removed, the earlier checkpoints are
        left as they were, and :class:`CheckpointError` names the folder and the problem."""
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            write(tmp)
            missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
            if missing:
                raise CheckpointError(f"checkpoint writer did not produce {missing}")
            write_manifest(tmp)
            apply_umask(tmp)  # safetensors writes 0600 whatever the umask: make it readable as usual
            for f in tmp.rglob("*"):
                _fsync_path(f)
            _fsync_path(tmp)
        except BaseException as e:  # also Ctrl-C mid-save: never leave a partial temp dir behind
            shutil.rmtree(tmp, ignore_errors=True)
            # safetensors reports a full disk as SafetensorError, torch.save as RuntimeError
            if isinstance(e, CheckpointError) or not isinstance(e, OSError | RuntimeError | SafetensorError):
                raise
            raise CheckpointError(self._save_failed(final, e)) from None
        if final.exists():  # re-saving a step (e.g. after resuming from it): replace the old one
            _remove_dir(final)
        os.rename(tmp, final)
        _fsync_path(self.root)
        _write_text_atomic(self.root / "latest", final.name + "\n")
        self.prune()
        best = self.best()
        if best is not None:
            _write_text_atomic(self.root / "best", best.name + "\n")
        return final

    def _save_failed(self, final: Path, e: BaseException) -> str:
        # torch.save on a full disk raises RuntimeError("... inline_container.cc ... unexpected pos ...")
        problem = os_error_message(e) if isinstance(e, OSError) else one_line(e)
        if "unexpected pos" in problem or "file write failed" in problem:
            problem = f"a write failed, most likely a full disk ({problem})"
        previous = self.latest()
        keep = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        return f"could not write checkpoint {final}: {problem}; nothing was saved, {keep}"

    def remove_all(self) -> None:
        """Delete every checkpoint and pointer (a fresh run with ``train.overwrite``)."""
        for _, p in self.complete_steps():
            _remove_dir(p)
        for name in ("latest", "best"):
            (self.root / name).unlink(missing_ok=True)
        self.clean_temp()

    def prune(self) -> None:
        if self.keep_last <= 0:
            return
        steps = self.complete_steps()
        keep = {p for _, p in steps[-self.keep_last :]}
        best = self.best()
        if best is not None:
            keep.add(best)
        for _, p in steps:
            if p not in keep:
                _remove_dir(p)


def tokenizer_dir(cfg: Any) -> Path | None:
    """The run's tokenizer folder: the copy in ``data.prepared_dir/tokenizer`` (exactly the one the data
    was tokenized with), else ``data.tokenizer`` if it is a local folder; None if neither exists."""
    cands = []
    if cfg.data.prepared_dir:
        cands.append(Path(cfg.data.prepared_dir).expanduser() / TOKENIZER_DIR)
    if cfg.data.tokenizer:
        cands.append(Path(cfg.data.tokenizer).expanduser())
    found = (c for c in cands if (c / "tokenizer.json").is_file() or (c / "tokenizer_config.json").is_file())
    return next(found, None)


def copy_tokenizer(cfg: Any, ckpt: Path) -> None:
    """Copy the run's tokenizer into ``ckpt/tokenizer`` (a few MB at most), so the checkpoint works
    without the data folder, whose path in config.yaml may be relative to another directory."""
    src = tokenizer_dir(cfg)
    if src is not None:
        shutil.copytree(src, ckpt / TOKENIZER_DIR, ignore=shutil.ignore_patterns(".*"))


def _warn(msg: str) -> None:
    print(f"moc: {msg}", file=sys.stderr, flush=True)


def _val_loss(ckpt: Path) -> float | None:
    try:
        v = json.loads((ckpt / METRICS).read_text()).get("val_loss")
    except (OSError, ValueError):
        return None
    return float(v) if v is not None else None


# --------------------------------------------------------------------------------------------------
# RNG states (stored in trainer_state.pt, loadable with weights_only=True)
# --------------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    import random

    import numpy as np

    kind, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(_tuples(state["python"]))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """random.setstate wants nested tuples; a round trip may have turned them into lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x

"""Turn moc models and training checkpoints into :class:`MoCForCausalLM`, and find their tokenizers.

model = from_moc_checkpoint("runs/x/checkpoints/step_000200")   # same logits as the MoCModel
model, source = load_model("runs/x")            # a checkpoint, a run dir, or an exported HF folder
tok = resolve_tokenizer(source)                  # the tokenizer that goes with it (or a clear error)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moc.config import RunConfig, load_config
from moc.hf.configuration_moc import MoCConfig
from moc.hf.errors import HFError
from moc.hf.modeling_moc import MoCForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
TOKENIZER_HINT = "pass --tokenizer DIR (Python: tokenizer=DIR), a Hugging Face tokenizer folder"


@dataclass
class ModelSource:
    """Where a model came from: an exported/saved Hugging Face folder or a moc training checkpoint."""

    path: Path  # the folder holding the weights (a checkpoint dir is resolved from a run dir)
    kind: str  # "hf" or "checkpoint"
    run_config: RunConfig | None = None  # the checkpoint's config.yaml (checkpoints only)


def hf_config(cfg: RunConfig, **kwargs: Any) -> MoCConfig:
    """The Hugging Face config of a moc config (only ``model`` and ``memory`` matter)."""
    d = cfg.to_dict()
    return MoCConfig(
        model=d["model"], memory=d["memory"], memory_layers=cfg.memory_layers, moc_name=cfg.name, **kwargs
    )


def from_moc_model(model: torch.nn.Module, cfg: RunConfig | None = None) -> MoCForCausalLM:
    """A ``MoCForCausalLM`` with a copy of a ``MoCModel``'s weights (``cfg`` defaults to ``model.config``)."""
    cfg = cfg if cfg is not None else model.config
    hf = MoCForCausalLM(hf_config(cfg))
    hf.model.load_state_dict(model.state_dict(), strict=True)
    return hf.to(next(model.parameters()).dtype)


def is_hf_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a Hugging Face ``config.json`` of a moc model."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == MoCConfig.model_type
    except (OSError, ValueError):
        return False


def resolve_source(path: str | Path) -> ModelSource:
    """Classify ``path``: a Hugging Face folder, or a checkpoint (dir, run out_dir, or its checkpoints/)."""
    from moc.train.checkpoint import CONFIG, read_checkpoint_config, resolve_checkpoint
    from moc.train.errors import CheckpointError

    p = Path(path)
    if not p.exists():
        raise HFError(
            f"{p} does not exist; pass a training checkpoint, a run's out_dir, or an exported folder"
        )
    if is_hf_folder(p):
        return ModelSource(p, "hf")
    if (p / "config.json").is_file() and not (p / CONFIG).is_file():
        raise HFError(f"{p}/config.json is not a moc model (model_type is not 'moc')")
    try:
        ckpt = resolve_checkpoint(p)
    except CheckpointError as e:
        raise HFError(str(e)) from None
    if ckpt.is_file():
        raise HFError(
            f"{ckpt} is a bare weights file; pass its checkpoint directory (with {CONFIG}) so the model "
            "config is known"
        )
    if not (ckpt / CONFIG).is_file():
        raise HFError(f"checkpoint {ckpt} has no {CONFIG}; the model config is needed to rebuild the network")
    try:  # an empty or damaged config.yaml names itself, not "write the keys it sets" as a user's config
        read_checkpoint_config(ckpt)
    except CheckpointError as e:
        raise HFError(str(e)) from None
    return ModelSource(ckpt, "checkpoint", load_config(ckpt / CONFIG))


def from_moc_checkpoint(path: str | Path, dtype: torch.dtype | None = None) -> MoCForCausalLM:
    """Load a training checkpoint (dir with ``model.safetensors`` + ``config.yaml``, or a run dir: its
    newest checkpoint) as a ``MoCForCausalLM``, without loss: the logits equal the ``MoCModel``'s."""
    source = resolve_source(path)
    if source.kind != "checkpoint":
        raise HFError(f"{path} is an exported Hugging Face folder, not a training checkpoint; use load_model")
    return _load_checkpoint(source, dtype)


def _load_checkpoint(source: ModelSource, dtype: torch.dtype | None) -> MoCForCausalLM:
    from moc.train.checkpoint import WEIGHTS, check_state_fits, load_weights
    from moc.train.errors import CheckpointError

    assert source.run_config is not None
    model = MoCForCausalLM(hf_config(source.run_config))
    state = load_weights(source.path / WEIGHTS)
    try:
        check_state_fits(model.model.state_dict(), state, str(source.path / WEIGHTS))
    except CheckpointError as e:
        raise HFError(str(e)) from None
    model.model.load_state_dict(state, strict=True)
    model.config.name_or_path = str(source.path)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def load_model(
    path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[MoCForCausalLM, ModelSource]:
    """A ``MoCForCausalLM`` (in eval mode) from a training checkpoint, a run dir or a Hugging Face folder."""
    source = resolve_source(path)
    if source.kind == "hf":
        model = MoCForCausalLM.from_pretrained(str(source.path), dtype=dtype).eval()
    else:
        model = _load_checkpoint(source, dtype)
    if device is not None:
        model = model.to(device)
    return model, source


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def has_tokenizer(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES)


def tokenizer_candidates(source: ModelSource) -> list[Path]:
    """Folders that may hold the model's tokenizer, most specific first."""
    out = [source.path, source.path / "tokenizer"]  # training checkpoints keep a copy in tokenizer/
    cfg = source.run_config
    if cfg is not None:
        if cfg.data.prepared_dir:  # moc data prepare keeps a copy of the exact tokenizer used
            out.append(Path(cfg.data.prepared_dir).expanduser() / "tokenizer")
        if cfg.data.tokenizer:
            out.append(Path(cfg.data.tokenizer).expanduser())
    return out


def resolve_tokenizer(source: ModelSource | str | Path, tokenizer: Any = None) -> Any:
    """The tokenizer for a model: ``tokenizer`` if given (a folder or a loaded tokenizer), else the one
    next to the weights, in the prepared data, or at ``data.tokenizer``. Raises naming where it looked."""
    from moc.data.errors import DataError
    from moc.data.tokenizer import load_tokenizer

    if tokenizer is not None:
        return load_given_tokenizer(tokenizer)
    if not isinstance(source, ModelSource):
        source = resolve_source(source)
    try:
        tried = tokenizer_candidates(source)
        for cand in tried:
            if has_tokenizer(cand):
                return load_tokenizer(cand)
        cfg = source.run_config
        spec = cfg.data.tokenizer if cfg is not None else None
        if spec and "/" not in spec and not Path(spec).exists():  # a Hub id: works if in the local HF cache
            try:
                return load_tokenizer(spec)
            except DataError:
                pass
    except DataError as e:
        raise HFError(str(e)) from None
    where = ", ".join(str(p) for p in tried)
    raise HFError(f"no tokenizer found for {source.path} (looked in: {where}); {TOKENIZER_HINT}")


def load_given_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer from a folder path (checked to exist), or a loaded tokenizer passed through."""
    from moc.data.errors import DataError
    from moc.data.tokenizer import load_tokenizer

    if isinstance(tokenizer, str | Path) and not Path(tokenizer).expanduser().exists():
        raise HFError(f"tokenizer folder {tokenizer} does not exist; {TOKENIZER_HINT}")
    try:
        return load_tokenizer(tokenizer)
    except DataError as e:
        raise HFError(str(e)) from None


def check_tokenizer_fits(tokenizer: Any, vocab_size: int) -> None:
    """Raise if the tokenizer can emit ids the model has no embedding for."""
    n = len(tokenizer)
    if n > vocab_size:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise HFError(
            f"tokenizer/model vocabulary mismatch: tokenizer {name} has {n} tokens but the model's "
            f"vocabulary is {vocab_size} (model.vocab_size), so ids >= {vocab_size} have no embedding; use "
            "the tokenizer the model was trained with"
        )

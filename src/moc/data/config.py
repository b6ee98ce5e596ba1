"""Prepare (or find) the data a config's ``data`` section describes."""

from __future__ import annotations

from pathlib import Path

from moc.config import DataConfig, RunConfig
from moc.data.errors import DataError
from moc.data.prepare import prepare_chat_data, prepare_pretraining_data
from moc.data.prepared import read_meta


def prepare_from_config(
    cfg: RunConfig | DataConfig,
    *,
    chat: bool = False,
    default_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """The prepared directory for ``cfg.data``, tokenizing ``data.train`` first when needed.

    - ``data.train`` set: prepare it with ``data.tokenizer`` into ``data.prepared_dir`` (or
      ``default_dir``), reusing an identical earlier preparation. ``chat=True`` reads the sources as
      chat JSONL (``{"messages": [...]}``) with a loss mask on assistant tokens.
    - only ``data.prepared_dir`` set: use it as is (it must hold meta.json).
    """
    data = cfg.data if isinstance(cfg, RunConfig) else cfg
    out = data.prepared_dir or (str(default_dir) if default_dir is not None else None)
    if not data.train:
        if data.prepared_dir is None:
            raise DataError(
                "no training data: set data.train to files/folders/hf:NAME (with data.tokenizer) or "
                "data.prepared_dir to a directory made by `moc data prepare`"
            )
        read_meta(data.prepared_dir)
        return Path(data.prepared_dir)
    if data.tokenizer is None:
        raise DataError(
            "data.tokenizer is not set; train one with `moc tokenizer train --vocab-size 8192 SOURCES... "
            "--out tok` and pass --set data.tokenizer=tok"
        )
    if out is None:
        raise DataError(
            "data.prepared_dir is not set; pass --set data.prepared_dir=DIR for the tokenized data"
        )
    common = {"val_fraction": data.val_fraction, "seed": data.split_seed, "progress": progress}
    if chat:
        return prepare_chat_data(data.train, data.tokenizer, out, chat_template=data.chat_template, **common)
    text = {"text_field": data.text_field, "txt_mode": data.txt_mode}
    return prepare_pretraining_data(data.train, data.tokenizer, out, **text, **common)

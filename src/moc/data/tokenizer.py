"""Tokenizers: load any Hugging Face tokenizer, or train a byte-level BPE on the user's corpus.

    tok_dir = train_tokenizer(["corpus/"], vocab_size=8192, out_dir="tok")   # writes an HF tokenizer dir
    tok = load_tokenizer(tok_dir)        # == transformers.AutoTokenizer.from_pretrained(tok_dir)

A trained tokenizer has these special tokens (ids 0..4, in this order):

- ``<|endoftext|>``: end of document; also the bos and pad token. Documents are separated by it.
- ``<|system|>``, ``<|user|>``, ``<|assistant|>``: start of a chat turn (followed by a newline).
- ``<|end|>``: end of a chat turn; a chat model stops generating at it.

and :data:`DEFAULT_CHAT_TEMPLATE` as its chat template, which renders
``<|user|>\\nHi<|end|>\\n<|assistant|>\\nHello!<|end|>\\n`` and marks the assistant text plus its
``<|end|>`` with ``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)``
tells which tokens to train on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moc.data.errors import DataError
from moc.data.sources import Source, as_sources, iter_source_documents
from moc.errors import one_line, os_error_message

EOS_TOKEN = "<|endoftext|>"
END_TOKEN = "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [EOS_TOKEN, *ROLE_TOKENS.values(), END_TOKEN]
_N_BYTES = 256  # byte-level BPE starts from one token per byte

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown chat role ' + message['role'] + '; use system, user or assistant') -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def train_tokenizer(
    sources: Sequence[Source | str | Path],
    vocab_size: int,
    out_dir: str | Path,
    *,
    text_field: str = "text",
    txt_mode: str = "file",
    min_frequency: int = 2,
    progress: bool = True,
) -> Path:
    """Train a byte-level BPE (GPT-2 style pre-tokenization) and save it as a Hugging Face tokenizer dir.

    The result is deterministic for the same sources and settings. ``vocab_size`` counts the 256 byte
    tokens and the special tokens; a corpus too small to learn that many merges yields fewer tokens.
    Returns ``out_dir``, loadable with ``transformers.AutoTokenizer.from_pretrained(out_dir)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = _N_BYTES + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise DataError(
            f"--vocab-size {vocab_size} is too small: a byte-level BPE needs {_N_BYTES} byte tokens plus "
            f"{len(SPECIAL_TOKENS)} special tokens, so at least {minimum} (typical: 8192-65536)"
        )
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DataError(f"--out {out_dir} is a file, not a folder; choose another output folder")
    resolved = as_sources(sources)

    def texts():
        for source in resolved:
            for text, _ in iter_source_documents(source, text_field, txt_mode):
                yield text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(texts(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        chat_template=DEFAULT_CHAT_TEMPLATE,
    )
    out = Path(out_dir)
    save_tokenizer_atomically(fast, out)
    got = tok.get_vocab_size()
    if got < vocab_size and progress:
        print(
            f"note: the corpus supports only {got} tokens (asked for {vocab_size}); add text for more merges"
        )
    return out


def save_tokenizer_atomically(tokenizer: Any, out_dir: Path) -> None:
    """``save_pretrained`` into a temp folder inside ``out_dir``, then move each file into place.

    transformers 5 records the class as ``TokenizersBackend``, which transformers 4 cannot load; both
    read ``PreTrainedTokenizerFast`` (an alias in 5), so that is what we write.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-tokenizer-", dir=out_dir))
    try:
        try:
            tokenizer.save_pretrained(str(tmp))
        except Exception as e:  # the Rust tokenizer raises a bare Exception("... (os error 28)")
            if not (isinstance(e, OSError) or "os error" in str(e).lower()):
                raise
            why = os_error_message(e) if isinstance(e, OSError) else one_line(e)
            raise DataError(
                f"could not save the tokenizer in {out_dir}: {why}; free some space or choose another --out"
            ) from None
        config_file = tmp / "tokenizer_config.json"
        if config_file.exists():
            config = json.loads(config_file.read_text())
            if config.get("tokenizer_class") == "TokenizersBackend":
                config["tokenizer_class"] = "PreTrainedTokenizerFast"
                config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(name_or_path: str | Path | Any, chat_template: str | None = None) -> Any:
    """Load a Hugging Face tokenizer (a directory, or a Hub id available offline in the HF cache).

    ``chat_template`` (a Jinja string or a path to a ``.jinja`` file) replaces the tokenizer's own. An
    already-loaded tokenizer object is passed through (with the template applied). The tokenizer must
    define an eos token: it separates documents in prepared data.
    """
    if isinstance(name_or_path, str | Path):
        spec = str(name_or_path)
        path = Path(spec).expanduser()
        if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
            raise DataError(
                f"tokenizer {spec} does not exist; train one with `moc tokenizer train --vocab-size N "
                f"SOURCES... --out {spec}` or point to a Hugging Face tokenizer folder"
            )
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else spec)
        except Exception as e:  # transformers raises OSError, ValueError, ... for unloadable folders
            raise DataError(f"could not load tokenizer {spec}: {type(e).__name__}: {e}") from None
    else:
        tok = name_or_path
    if chat_template is not None:
        tpl = Path(chat_template)
        tok.chat_template = tpl.read_text() if "{" not in chat_template and tpl.is_file() else chat_template
    if tok.eos_token_id is None:
        raise DataError(
            f"tokenizer {getattr(tok, 'name_or_path', '')} has no eos token; set one (tokenizer.eos_token = "
            "'...'; save_pretrained) so documents can be separated"
        )
    return tok


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """Number of token ids the tokenizer can emit (base vocab + added tokens)."""
    return len(tokenizer)


def chat_stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids at which chat generation should stop: eos and, when present, the ``<|end|>`` turn marker."""
    ids = [tokenizer.eos_token_id]
    end = tokenizer.convert_tokens_to_ids(END_TOKEN)
    if isinstance(end, int) and end != tokenizer.unk_token_id and end not in ids:
        ids.append(end)
    return ids


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides token ids (vocab, merges, normalizer, specials, chat template)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    payload = {
        "class": type(tokenizer).__name__,
        "backend": content,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "added": sorted((str(k), int(v)) for k, v in tokenizer.get_added_vocab().items()),
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

"""Chat / instruction fine-tuning data: validate conversations and tokenize them with a loss mask.

Input rows hold ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` (JSONL,
or a Parquet file / Hugging Face dataset with a ``messages`` column). Each conversation is rendered with
the tokenizer's chat template; only assistant tokens are trained on (the reply and its end-of-turn
marker), everything else gets loss-mask 0.

Two ways to find the assistant tokens, chosen by the template:

- a template with ``{% generation %}`` blocks (the default template of ``moc tokenizer train`` has them):
  ``tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)``;
- any other template: the assistant turn ``i`` is the text that rendering ``messages[:i+1]`` adds to
  rendering ``messages[:i]`` with the generation prompt, minus trailing whitespace. This needs a
  template whose renders of a conversation's prefixes are prefixes of the full render (true of the
  common Llama/Qwen/ChatML templates); otherwise a clear error asks for ``{% generation %}`` blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from moc.data.errors import DataError
from moc.data.sources import Source, iter_rows

ROLES = ("system", "user", "assistant")
MESSAGES_FIELD = "messages"


def validate_messages(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The row's messages as ``[{"role", "content"}]``, or a DataError naming ``where`` and the problem."""
    if MESSAGES_FIELD not in row:
        fields = ", ".join(sorted(row)) or "none"
        raise DataError(
            f"{where}: no {MESSAGES_FIELD!r} field (fields: {fields}); expected "
            '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}'
        )
    messages = row[MESSAGES_FIELD]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(
                f"{where}: message {i} is a {type(m).__name__}, expected an object with role and content"
            )
        for key in ("role", "content"):
            if key not in m or m[key] is None:
                raise DataError(f"{where}: message {i} has no {key!r}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: no assistant message, so nothing to train on; add one or drop the row")
    return out


def iter_conversations(source: Source) -> Iterator[tuple[list[dict[str, str]], str]]:
    """Validated ``(messages, location)`` for every row of a jsonl/parquet/hf source."""
    for row, where in iter_rows(source, [MESSAGES_FIELD]):
        yield validate_messages(row, where), where


def has_generation_blocks(template: str | None) -> bool:
    """Whether a Jinja chat template marks assistant text with ``{% generation %}``."""
    if not template:
        return False
    compact = template.replace(" ", "").replace("-", "")
    return "{%generation%}" in compact


def encode_conversation(
    tokenizer: Any, messages: list[dict[str, str]], where: str = ""
) -> tuple[list[int], list[int]]:
    """``(token_ids, loss_mask)`` of one rendered conversation; mask 1 on assistant tokens only."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise DataError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')} has no chat template; pass "
            "--chat-template FILE (a Jinja template) or use a tokenizer from `moc tokenizer train`, "
            "which has a default one"
        )
    try:
        if has_generation_blocks(template):
            enc = tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            ids, mask = list(enc["input_ids"]), [int(m) for m in enc["assistant_masks"]]
        else:
            ids, mask = _encode_by_prefixes(tokenizer, messages, where)
    except DataError:
        raise
    except Exception as e:  # a template can raise anything (jinja2 errors, KeyError in user templates)
        raise DataError(f"{where}: the chat template failed: {type(e).__name__}: {e}") from None
    if not any(mask):
        raise DataError(
            f"{where}: the chat template produced no assistant tokens to train on; check that its "
            "{% generation %} blocks wrap the assistant content"
        )
    return ids, mask


def _encode_by_prefixes(
    tokenizer: Any, messages: list[dict[str, str]], where: str
) -> tuple[list[int], list[int]]:
    def render(msgs: list[dict[str, str]], prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    full = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise DataError(
                f"{where}: cannot locate assistant turns: this chat template renders a conversation's "
                "prefix differently from the full conversation; add {% generation %}...{% endgeneration %} "
                "around the assistant content in the template (--chat-template FILE)"
            )
        spans.append((len(before), len(upto.rstrip())))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(e > s and any(a <= s < b for a, b in spans)) for s, e in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask

"""Chat / IFT data: assistant-only loss masks (both template paths), packing, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moc.data import DataError, PackedSequences, load_prepared, prepare_chat_data
from moc.data.chat import encode_conversation, validate_messages

CHATS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
    ],
    [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Red, of course."},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}],
]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_chats(path: Path, chats: list) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    return path


def conversations(d) -> list[tuple[list[int], list[int]]]:
    ends = [*d.doc_starts[1:].tolist(), d.n_tokens]
    return [
        (d.tokens[lo:hi].tolist(), d.loss_mask[lo:hi].tolist()) for lo, hi in zip(d.doc_starts.tolist(), ends)
    ]


@pytest.mark.parametrize("template", [None, CHATML], ids=["generation-blocks", "prefix-diff"])
def test_only_assistant_tokens_are_trained(tmp_path: Path, tok_dir: Path, tok, template) -> None:
    src = write_chats(tmp_path / "c.jsonl", CHATS)
    out = prepare_chat_data(
        [src], tok_dir, tmp_path / "p", val_fraction=0.0, chat_template=template, progress=False
    )
    d = load_prepared(out)
    assert d.meta["kind"] == "chat" and d.loss_mask is not None and d.n_documents == 3
    end = "<|end|>" if template is None else "<|im_end|>"
    for (ids, mask), chat in zip(conversations(d), CHATS):
        assert ids[-1] == tok.eos_token_id and mask[-1] == 0  # conversations packed, eos between, untrained
        trained = tok.decode([t for t, m in zip(ids, mask) if m])
        assert trained == "".join(m["content"] + end for m in chat if m["role"] == "assistant")
        rendered = tok.apply_chat_template(chat, tokenize=False, chat_template=template)
        assert tok.decode(ids[:-1]) == rendered
    assert d.meta["n_loss_tokens"]["train"] == int(d.loss_mask.sum())
    # Through packing: the labels that are not -100 are exactly the masked-in tokens.
    ps = PackedSequences(d, seq_len=8)
    labels = torch.cat([ps[i]["targets"] for i in range(len(ps))])
    kept = labels[labels != -100].tolist()
    n = len(ps) * 8
    assert kept == [t for t, m in zip(d.tokens[1 : n + 1].tolist(), d.loss_mask[1 : n + 1].tolist()) if m]
    # The saved tokenizer copy carries the template actually used.
    saved = (out / "tokenizer" / "chat_template.jinja").read_text()
    assert saved == (template or tok.chat_template)


def test_chat_validation_names_file_and_line(tmp_path: Path, tok_dir: Path) -> None:
    cases = {
        '{"text": "hi"}': r"bad.jsonl:2: no 'messages' field \(fields: text\)",
        '{"messages": []}': r"bad.jsonl:2: 'messages' must be a non-empty list",
        '{"messages": [{"content": "x"}]}': r"bad.jsonl:2: message 0 has no 'role'",
        '{"messages": [{"role": "user"}]}': r"bad.jsonl:2: message 0 has no 'content'",
        '{"messages": [{"role": "tool", "content": "x"}]}': r"bad.jsonl:2: message 0 has unknown role "
        r"'tool'; use "
        r"one of system, user, assistant",
        '{"messages": [{"role": "user", "content": "x"}]}': r"bad.jsonl:2: no assistant message",
        '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}': (
            r"bad.jsonl:2: message 0 content must be a string, got int"
        ),
    }
    good = json.dumps({"messages": CHATS[0]})
    for line, pattern in cases.items():
        (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
        with pytest.raises(DataError, match=pattern):
            prepare_chat_data([tmp_path / "bad.jsonl"], tok_dir, tmp_path / "p", progress=False)
    assert not (tmp_path / "p" / "meta.json").exists()


def test_template_problems(tok) -> None:
    msgs = validate_messages({"messages": CHATS[0]}, "x")
    tok.chat_template, saved = None, tok.chat_template
    try:
        with pytest.raises(DataError, match="has no chat template; pass --chat-template FILE"):
            encode_conversation(tok, msgs, "f:1")
        # Not prefix-stable: the system prompt moves once there is an assistant turn.
        tok.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
        with pytest.raises(DataError, match=r"f:1: cannot locate assistant turns.*\{% generation %\}"):
            encode_conversation(tok, msgs, "f:1")
        tok.chat_template = "{% generation %}{% endgeneration %}{{ messages[0]['content'] }}"
        with pytest.raises(DataError, match="f:1: the chat template produced no assistant tokens"):
            encode_conversation(tok, msgs, "f:1")
        tok.chat_template = "{{ messages[0]['nope'] + 1 }}"
        with pytest.raises(DataError, match="f:1: the chat template failed"):
            encode_conversation(tok, msgs, "f:1")
    finally:
        tok.chat_template = saved

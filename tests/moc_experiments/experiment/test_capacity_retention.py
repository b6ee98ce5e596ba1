"""The retention protocol of `moc-lab run capacity` with real text and real chat: the word-level
vocabulary, real-text windows, chat labels, the unchanged world-only stream, the report caption and the
smoke run with both options end to end (on a tiny corpus built from fake sources)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

import moc_experiments.experiment.capacity as cap
import moc_experiments.experiment.capacity.data as cap_data
import moc_experiments.experiment.capacity.pipeline as cap_pipeline
from moc.config import ConfigError
from moc_experiments.cli import main
from moc_experiments.corpus.world import BOS, KnowledgeWorld
from moc_experiments.corpus.world_text import (
    CHAT_WORDS,
    IGNORE,
    UNK,
    WorldText,
    build_vocab,
    real_texts,
    words,
)
from moc_experiments.experiment.capacity.report import retention_caption
from moc_experiments.experiment.capacity.train import CapacityJob


def _fakes():
    """tests/moc_experiments/corpus/fakes.py (the fake text sources the corpus tests build from)."""
    spec = importlib.util.spec_from_file_location(
        "corpus_fakes", Path(__file__).parents[1] / "corpus" / "fakes.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------ vocabulary


def test_words_lowercase_and_punctuation() -> None:
    assert words("The LORD's day, 3 times!") == ["the", "lord", "'", "s", "day", ",", "3", "times", "!"]


def test_vocab_keeps_world_ids_then_unk_then_top_words() -> None:
    world = KnowledgeWorld(12, 2, 4, seed=0)
    texts = ["The cat sat. The dog!", "zebra zebra cat, lives"]
    vocab = build_vocab(world.vocab, texts, 3)
    n = len(world.vocab)
    assert vocab[:n] == world.vocab  # every world word keeps its id
    assert vocab[n] == UNK
    # cat and zebra twice; then ties of one count by word ("!" < "," < "dog" < "sat"); "the", "." and
    # "lives" are world words already and take no new id.
    assert vocab[n + 1 :] == ["cat", "zebra", "!"]
    assert build_vocab(world.vocab, texts[::-1], 3) == vocab  # independent of the document order
    assert len(build_vocab(world.vocab, texts, 0)) == n + 1
    with_chat = build_vocab(world.vocab, ["a : b", "c :"], 1, CHAT_WORDS)
    assert with_chat[n + 1 :] == [":", "user", "assistant"]  # ":" is a text word already: not repeated


def _corpus(tmp: Path) -> tuple[Path, Path]:
    """A hand-written pretrain/text.jsonl (two real-text documents, one fact document) and ift/train.jsonl."""
    text = tmp / "text.jsonl"
    rows = [
        {"text": "In the beginning God created the heaven and the earth . " * 4, "source": "kjv"},
        {"text": "Factword capital of Fooland is Factword .", "source": "facts"},
        {"text": "Who is there ? Nay , answer me : stand and unfold yourself .", "source": "shakespeare"},
    ]
    text.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ift = tmp / "ift.jsonl"
    chats = [
        [{"role": "user", "content": "What is the Earth?"}, {"role": "assistant", "content": "The heaven."}],
        [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "too late"}],
    ]
    ift.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    return text, ift


def test_world_text_reads_only_real_text(tmp_path: Path) -> None:
    world = KnowledgeWorld(12, 2, 4, seed=0)
    text_file, ift_file = _corpus(tmp_path)
    assert len(real_texts(text_file)) == 2
    wt = WorldText.load(world, text_file, ift_file, vocab_words=100, chat=True)
    assert "factword" not in wt.vocab and "fooland" not in wt.vocab  # fact documents are not real text
    assert wt.vocab[: len(world.vocab)] == world.vocab
    assert wt.encode("the Zorblax heaven") == [world.index["the"], wt.unk_id, wt.index["heaven"]]
    assert wt.stats()["text_documents"] == 2 and len(wt.chats) == 2


def test_windows_are_bos_plus_real_text_padded(tmp_path: Path) -> None:
    world = KnowledgeWorld(12, 2, 4, seed=0)
    text_file, _ = _corpus(tmp_path)
    wt = WorldText.load(world, text_file, vocab_words=100)
    L = 10
    docs = [d.tolist() for d in wt.docs]
    seen_starts = set()
    for seed in range(40):
        win = wt.window(np.random.default_rng(seed), L)
        assert win[0] == wt.bos_id and wt.bos_id not in win[1:]
        body = win[1:]
        assert len(body) == L - 1  # both documents are longer than a window
        # a contiguous slice of one real-text document
        hits = [(k, s) for k, d in enumerate(docs) for s in range(len(d)) if d[s : s + len(body)] == body]
        assert hits, wt.decode(body)
        seen_starts |= set(hits)
    assert len(seen_starts) > 5  # windows start anywhere, not only at the top of a document
    assert wt.window(np.random.default_rng(3), L) == wt.window(np.random.default_rng(3), L)

    x, m, y, _ = cap_data.batch(world, np.random.default_rng(0), 6, 0.3, 30, wt, 1.0)
    assert (x[:, 0] == wt.bos_id).all()
    for row in range(6):
        n = int(m[row].sum())
        assert m[row, :n].all() and not m[row, n:].any()  # right-padded
        assert (x[row, n:] == world.pad_id).all() and (y[row, n:] == -100).all()
        assert (y[row, :n] == x[row, :n]).all()
    counts: dict[str, int] = {}
    _, m, _, _ = cap_data.batch(world, np.random.default_rng(1), 400, 0.3, 30, wt, 0.5, counts)
    assert counts["text"] + counts["world"] == int(m.sum())
    assert 0.3 < counts["text"] / int(m.sum()) < 0.8  # about half the documents (the longer ones)


# ------------------------------------------------------------------------------------------ real chat


def test_real_chat_labels_only_the_answer(tmp_path: Path) -> None:
    world = KnowledgeWorld(12, 2, 4, seed=0)
    text_file, ift_file = _corpus(tmp_path)
    wt = WorldText.load(world, text_file, ift_file, vocab_words=100, chat=True)
    user, answer = wt.chats[0]
    ids, labels = wt.chat_doc(user, answer, 20)
    assert wt.decode(ids) == f"{BOS} user : what is the earth ? assistant : the heaven ."
    n_prompt = 10  # <bos> user : what is the earth ? assistant :
    assert labels == [IGNORE] * n_prompt + ids[n_prompt:]
    assert wt.decode(ids[n_prompt:]) == "the heaven ."
    ids, labels = wt.chat_doc(user, answer, 12)  # truncated inside the answer
    assert len(ids) == len(labels) == 12 and labels[-2:] == ids[-2:] and labels[:10] == [IGNORE] * 10
    assert wt.usable_chats(20) == [0]  # the second example's question fills the whole document
    x, m, y = wt.chat_batch(np.random.default_rng(0), 3, 20)
    for row in range(3):
        assert wt.decode(x[row][y[row] != IGNORE].tolist()) == "the heaven ."
        assert (x[row][m[row] == 0] == world.pad_id).all()
        assert int(m[row].sum()) == 13


# ------------------------------------------------------------------------------ fraction 0 = unchanged

# sha256 of the first three capacity-smoke batches of seed 0 (input_ids, mask, labels), made with the
# code before real text existed (git HEAD before this option): the world-only stream must not change.
WORLD_STREAM_SHA = "fe484b938e1ac21bc2ba2a3b7d5c48574ef4dcd57d5c8536580f5b3495d265d1"


def _stream_digest(text: WorldText | None, frac: float) -> str:
    cfg = cap.load_capacity("capacity-smoke")
    world = cap.make_world(cfg)
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for _ in range(3):
        for t in cap_data.batch(world, rng, 16, cfg.train.qa_doc_fraction, world.max_doc_len, text, frac)[:3]:
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_fraction_zero_leaves_the_stream_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cap.load_capacity("capacity-smoke")
    assert cfg.text.fraction == 0 and cfg.ift.data == "world_chat" and not cfg.uses_corpus

    def no_corpus(*a, **k):
        raise AssertionError("no corpus may be built when no real text or chat is used")

    monkeypatch.setattr(cap_data, "text_corpus", no_corpus)
    monkeypatch.setattr(cap_pipeline, "text_corpus", no_corpus)
    world = cap.make_world(cfg)
    assert cap_data.world_text(cfg, world) is None
    assert _stream_digest(None, 0.0) == WORLD_STREAM_SHA
    text_file, _ = _corpus(tmp_path)
    wt = WorldText.load(world, text_file, vocab_words=100)
    assert _stream_digest(wt, 0.0) == WORLD_STREAM_SHA  # text given, fraction 0: still the same draws
    assert _stream_digest(wt, 0.5) != WORLD_STREAM_SHA
    assert cap.mean_doc_tokens(world, cfg.train.qa_doc_fraction) == 22.1725  # steps unchanged too


def test_text_config_errors() -> None:
    with pytest.raises(ConfigError, match="text.fraction"):
        cap.load_capacity("capacity-smoke", ["text.fraction=1.0"])
    with pytest.raises(ConfigError):
        cap.load_capacity("capacity-smoke", ["ift.data=chat"])
    cfg = cap.load_capacity("capacity-retention")
    assert cfg.text.fraction == 0.5 and cfg.ift.data == "real_chat" and cfg.seeds == 3
    assert set(cfg.models) == set(cap.load_capacity("capacity-demo").models)
    assert cfg.corpus_dir == cfg.run_dir / "data" / "corpus"


# ------------------------------------------------------------------------------------------- report

OLD_CAPTION = (
    "Retention: instruction fine-tuning on the chat form (100 steps x 32 documents about the "
    "question-trained people, LR 0.001; bank LR x0.16667 or frozen, memory layers x0.5); recall % before "
    "and after."
)


def test_retention_caption() -> None:
    ift = {"steps": 100, "batch_size": 32, "lr": 0.001, "bank_lr_scale": 0.16667, "memory_lr_scale": 0.5}
    old = {"config": {"ift": ift}}  # results written before the text options existed
    assert retention_caption(old) == OLD_CAPTION
    now = {"config": {"ift": {**ift, "data": "world_chat"}, "text": {"fraction": 0.0}}}
    assert retention_caption(now) == OLD_CAPTION
    mixed = {
        "config": {"ift": {**ift, "data": "world_chat"}, "text": {"fraction": 0.5}},
        "text": {"vocab": 9},
    }
    assert "50% of the documents were windows of real text" in retention_caption(mixed)
    assert "on the chat form" in retention_caption(mixed)
    real = {"config": {"ift": {**ift, "data": "real_chat"}, "text": {"fraction": 0.0}}}
    assert "real chat data" in retention_caption(real) and "real text" not in retention_caption(real)
    assert "on the chat form" not in retention_caption(real)


# --------------------------------------------------------------------------------- smoke, end to end


SMOKE_SETS = ("text.fraction=0.5", "ift.data=real_chat", "text.vocab_words=300", "seeds=1")


@pytest.fixture(scope="module")
def retention_smoke(tmp_path_factory: pytest.TempPathFactory):
    """capacity-smoke with text.fraction=0.5 and ift.data=real_chat, on a corpus built from fake sources."""
    base = tmp_path_factory.mktemp("retention")
    roots = _fakes().make_fake_roots(base / "sources")
    out = base / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(
        cap_pipeline, "text_corpus", functools.partial(cap.text_corpus, roots=roots, n_ift=300, n_ift_val=20)
    )
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            argv = ["run", "capacity-smoke", "--out", str(out), "--quiet"]
            for o in SMOKE_SETS:
                argv += ["--set", o]
            assert main(argv) == 0
    finally:
        mp.undo()
    return out, json.loads((out / "results.json").read_text())


def test_retention_smoke(retention_smoke) -> None:
    out, results = retention_smoke
    info = results["text"]
    world_vocab = results["world"]["vocab"]
    assert info["world_vocab"] == world_vocab and world_vocab < info["vocab"] <= world_vocab + 1 + 300 + 3
    assert info["text_documents"] > 0 and info["chat_examples_usable"] > 0
    assert (out / "data" / "corpus" / "MANIFEST.json").is_file()  # the default corpus folder
    for key, runs in results["runs"].items():
        (r,) = runs
        assert r["world_tokens"] > 0 and r["text_tokens"] > 0
        assert r["world_tokens"] + r["text_tokens"] == r["tokens"]
        for v in r["ift"].values():
            assert all(np.isfinite(v["loss_curve"])) and 0 <= v["recall"]["bio"] <= 1
        if key == "moc_token":
            assert r["ift"]["frozen"]["bank_max_change"] == 0.0 and r["ift"]["low_lr"]["bank_max_change"] > 0
    # the models' embeddings cover the extended vocabulary
    dense = cap.model_config(cap.load_capacity("capacity-smoke"), "dense_backbone", info["vocab"], 10)
    from moc.accounting import count_params

    assert count_params(dense).items() <= results["models"]["dense_backbone"]["params"].items()
    report = (out / "report.md").read_text()
    assert "instruction fine-tuning on real chat data" in report
    assert "50% of the documents were windows of real text" in report
    assert "chat form (not trained)" in report


def test_retention_smoke_deterministic_and_reused(retention_smoke, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same job gives the same numbers again; a rerun reuses the runs (same recipe and corpus)."""
    out, results = retention_smoke
    exp = cap.load_capacity("capacity-smoke", [*SMOKE_SETS, f"out_dir={out}"])
    first = results["runs"]["moc_token"][0]
    calls: list[int] = []
    real_batch = WorldText.chat_batch
    monkeypatch.setattr(WorldText, "chat_batch", lambda self, *a: calls.append(1) or real_batch(self, *a))
    root = out / "data" / "corpus"
    corpus = {"text": str(root / "pretrain" / "text.jsonl"), "ift": str(root / "ift" / "train.jsonl")}
    again = cap.train_run(
        CapacityJob(
            key="moc_token", seed=first["seed"], steps=first["steps"], experiment=exp.to_dict(), corpus=corpus
        )
    )
    assert again["loss_curve"] == first["loss_curve"] and again["recall"] == first["recall"]
    assert again["ift"]["frozen"]["loss_curve"] == first["ift"]["frozen"]["loss_curve"]
    assert len(calls) == 2 * exp.ift.steps  # every IFT step of both bank treatments used real chat
    stamp = results["text"]["corpus_fingerprint"]
    assert len(cap_pipeline.reusable_runs(exp, out / "results.json", stamp)) == len(results["runs"])
    assert cap_pipeline.reusable_runs(exp, out / "results.json", "another corpus") == {}

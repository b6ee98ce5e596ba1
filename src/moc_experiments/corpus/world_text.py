"""Real text and real chat data in the knowledge world's word-level vocabulary (the paper's retention
protocol: pretrain on biographies plus real text, instruction fine-tune on chat data).

    world = KnowledgeWorld()
    text = WorldText.load(world, paths.pretrain_text, paths.ift_train, vocab_words=2000, chat=True)
    text.vocab[: len(world.vocab)] == world.vocab       # the world's words keep their ids
    ids = text.window(rng, world.max_doc_len)            # [BOS] + up to L - 1 real-text tokens
    x, mask, labels = text.chat_batch(rng, 32, world.max_doc_len)    # (32, L) each; labels on answers

Tokenisation is word-level like the world: lowercase, then words and single punctuation marks
(:data:`WORD_RE`). The vocabulary is the world's, then ``<unk>``, then the ``vocab_words`` most frequent
real-text words not already in it (by count, ties by word), then the chat role words when chat data is
used. Every other word is ``<unk>``. Only real text is read: the corpus's short fact documents (source
``facts``) are skipped because their facts are not the world's.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moc_experiments.corpus.text_sources import TEXT_SOURCES
from moc_experiments.corpus.world import BOS, KnowledgeWorld
from moc_experiments.errors import CorpusError

UNK = "<unk>"
# Words, then any single character that is neither a word character nor a space (punctuation).
WORD_RE = re.compile(r"\w+|[^\w\s]")
# A chat document: [BOS] user : <user content> assistant : <assistant content>
CHAT_WORDS = ("user", "assistant", ":")
IGNORE = -100  # Hugging Face's ignore index for labels


def words(text: str) -> list[str]:
    """Lowercased words and punctuation marks of ``text``."""
    return WORD_RE.findall(text.lower())


def build_vocab(
    base: list[str], texts: Iterable[str], vocab_words: int, extra: Iterable[str] = ()
) -> list[str]:
    """``base`` (ids unchanged), ``<unk>``, the ``vocab_words`` most frequent words of ``texts`` not in it
    (by count, then alphabetically, so the order never depends on the order of ``texts``), then the
    ``extra`` words still missing."""
    vocab = list(base)
    if UNK not in vocab:
        vocab.append(UNK)
    seen = set(vocab)
    counts = Counter(w for t in texts for w in words(t) if w not in seen)
    vocab += sorted(counts, key=lambda w: (-counts[w], w))[:vocab_words]
    seen = set(vocab)
    vocab += [w for w in dict.fromkeys(extra) if w not in seen]
    return vocab


def encode(index: dict[str, int], text: str) -> list[int]:
    """Word ids of ``text`` under ``index`` (word -> id, with ``<unk>``); unknown words are ``<unk>``."""
    unk = index[UNK]
    return [index.get(w, unk) for w in words(text)]


def real_texts(path: str | Path) -> list[str]:
    """The real-text documents of a corpus ``pretrain/text.jsonl`` (fact documents skipped: only the
    sources of :data:`~moc_experiments.corpus.text_sources.TEXT_SOURCES` are real text)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row.get("source") in TEXT_SOURCES:
                    out.append(row["text"])
    return out


def chat_examples(path: str | Path) -> list[tuple[str, str]]:
    """(user, assistant) contents of the first user and assistant turns of each line of a corpus
    ``ift/train.jsonl`` (``{"messages": [{"role": ..., "content": ...}, ...]}``)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            turns = {}
            for m in json.loads(line)["messages"]:
                turns.setdefault(m["role"], m["content"])
            if "user" in turns and "assistant" in turns:
                out.append((turns["user"], turns["assistant"]))
    return out


@dataclass
class WorldText:
    """The world's vocabulary extended with real text; real-text windows and chat documents in it.

    ``docs``: every real-text document as token ids; ``chats``: (user ids, assistant ids) per chat
    example (empty without chat data).
    """

    world: KnowledgeWorld
    vocab: list[str]
    docs: list[np.ndarray]
    chats: list[tuple[list[int], list[int]]]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.unk_id = self.index[UNK]
        self.bos_id = self.index[BOS]
        self.pad_id = self.world.pad_id
        lengths = np.array([len(d) for d in self.docs], dtype=np.float64)
        if not len(lengths) or lengths.sum() == 0:
            raise CorpusError("the corpus has no real-text tokens")
        # Windows are drawn per token (a document by its length), so long documents are not undersampled.
        self._doc_p = lengths / lengths.sum()

    @classmethod
    def load(
        cls,
        world: KnowledgeWorld,
        text_file: str | Path,
        ift_file: str | Path | None = None,
        vocab_words: int = 2000,
        chat: bool = False,
    ) -> WorldText:
        """Read a built corpus: the vocabulary from its real text, the chat examples when ``chat``."""
        texts = real_texts(text_file)
        vocab = build_vocab(world.vocab, texts, vocab_words, CHAT_WORDS if chat else ())
        index = {w: i for i, w in enumerate(vocab)}
        docs = [np.asarray(encode(index, t), dtype=np.int64) for t in texts]
        chats = []
        if chat:
            if ift_file is None:
                raise CorpusError("chat data asked for but no IFT file given")
            chats = [(encode(index, u), encode(index, a)) for u, a in chat_examples(ift_file)]
        return cls(world, vocab, docs, chats)

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text``; words outside the vocabulary are ``<unk>``."""
        return encode(self.index, text)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)

    def stats(self) -> dict[str, float | int]:
        n = sum(len(d) for d in self.docs)
        unk = sum(int((d == self.unk_id).sum()) for d in self.docs)
        return {
            "vocab": len(self.vocab),
            "world_vocab": len(self.world.vocab),
            "text_documents": len(self.docs),
            "text_tokens": n,
            "unk_rate": unk / max(n, 1),
            "chat_examples": len(self.chats),
        }

    # -- pretraining ----------------------------------------------------------------------------------

    def window(self, rng: np.random.Generator, L: int) -> list[int]:
        """[BOS] + a window of up to ``L - 1`` consecutive tokens of one real-text document (a document is
        picked with probability proportional to its length, the start uniformly)."""
        doc = self.docs[int(rng.choice(len(self.docs), p=self._doc_p))]
        start = int(rng.integers(max(len(doc) - (L - 1), 0) + 1))
        return [self.bos_id, *doc[start : start + L - 1].tolist()]

    # -- instruction fine-tuning ----------------------------------------------------------------------

    def chat_doc(self, user: list[int], assistant: list[int], L: int) -> tuple[list[int], list[int]]:
        """``[BOS] user : USER assistant : ASSISTANT`` truncated to ``L`` tokens -> (ids, labels), labels
        -100 everywhere but the assistant's content (the loss of chat fine-tuning)."""
        i = self.index
        prompt = [self.bos_id, i["user"], i[":"], *user, i["assistant"], i[":"]]
        ids = (prompt + assistant)[:L]
        labels = [IGNORE] * min(len(prompt), L) + ids[len(prompt) :]
        return ids, labels

    def usable_chats(self, L: int) -> list[int]:
        """Indices of the chat examples that keep at least one assistant token within ``L`` tokens."""
        return [k for k, (u, a) in enumerate(self.chats) if a and len(u) + 5 < L]

    def chat_batch(
        self, rng: np.random.Generator, n: int, L: int, usable: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` chat documents drawn uniformly from ``usable`` (default: :meth:`usable_chats`), right-padded
        to ``L``: input_ids, attention_mask, labels, each (n, L)."""
        usable = self.usable_chats(L) if usable is None else usable
        if not usable:
            raise CorpusError(f"no chat example has an assistant token within {L} tokens")
        ids = np.full((n, L), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, L), dtype=np.int64)
        labels = np.full((n, L), IGNORE, dtype=np.int64)
        for r in range(n):
            doc, lab = self.chat_doc(*self.chats[usable[int(rng.integers(len(usable)))]], L)
            ids[r, : len(doc)] = doc
            mask[r, : len(doc)] = 1
            labels[r, : len(lab)] = lab
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)

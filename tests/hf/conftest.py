"""Fixtures for the Hugging Face layer: a tiny trained tokenizer and tiny training checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import moc
from memory_helpers import make_memory_matter
from moc.train.checkpoint import save_weights, shared_aliases

VOCAB = 320  # model vocabulary; the tokenizer below has <= 300 tokens
TEXT = (
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.\n"
    "Question: what is the capital of Peru? Answer: Lima.\n"
    "Mixture of chapters models read a routed memory bank of latent tokens.\n"
) * 20


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE of at most 300 tokens with moc's special tokens and chat template."""
    from moc.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    return train_tokenizer([str(corpus)], vocab_size=300, out_dir=root / "tokenizer", progress=False)


def build_core(*overrides: str, seed: int = 0) -> moc.model.MoCModel:
    """A tiny MoC model whose memory output projections are non-zero (so memory changes the logits)."""
    torch.manual_seed(seed)
    # causal routing pinned (tiny-moc routes per token): these tests exercise the chunked read; override it
    cfg = moc.load_config("tiny-moc", [f"model.vocab_size={VOCAB}", "memory.routing=causal", *overrides])
    return make_memory_matter(moc.build_model(cfg)).eval()


def write_checkpoint(model: moc.model.MoCModel, out: Path, tokenizer: Path | None = None) -> Path:
    """A checkpoint dir as moc's training engine writes it (the files this layer reads)."""
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), out / "model.safetensors", shared_aliases(model))
    cfg = model.config
    if tokenizer is not None:
        cfg = cfg.replace([f"data.tokenizer={tokenizer}"])
    cfg.save(out / "config.yaml")
    return out


@pytest.fixture
def make_checkpoint(tmp_path: Path, tok_dir: Path):
    """``make_checkpoint(*overrides, tokenizer=True)`` -> (checkpoint dir, the MoCModel)."""

    def make(*overrides: str, tokenizer: bool = True, name: str = "ckpt") -> tuple[Path, moc.model.MoCModel]:
        model = build_core(*overrides)
        return write_checkpoint(model, tmp_path / name, tok_dir if tokenizer else None), model

    return make


@pytest.fixture
def make_core():
    """``make_core(*overrides)`` -> a tiny MoCModel with live memory (vocab 320)."""
    return build_core

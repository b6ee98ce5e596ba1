"""`moc-lab run capacity`: recall and memory-off metrics, FLOPs axes, config errors, and the smoke run
through the CLI (results.json, report.md, plots)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_helpers import make_memory_matter
from moc.accounting import count_flops
from moc.config import ConfigError
from moc_experiments.cli import main
from moc_experiments.corpus.world import KnowledgeWorld
from moc_experiments.experiment.capacity import (
    CapacityJob,
    chapters_shuffled,
    flops_per_token,
    load_capacity,
    memory_off,
    model_config,
    recall,
    recall_and_type,
    train_run,
)


class Oracle(torch.nn.Module):
    """Answers a prompt with the fact for its person token, or with a fixed wrong token for ``wrong``."""

    def __init__(self, world: KnowledgeWorld, wrong: set[int]) -> None:
        super().__init__()
        self.world, self.wrong = world, wrong

    def forward(self, x: torch.Tensor):
        w = self.world
        logits = torch.zeros(x.shape[0], x.shape[1], len(w.vocab))
        for i, row in enumerate(x.tolist()):
            words = w.decode(row).split()
            person = next(w.names.index(t) for t in words if t in w.names)
            a = next(
                j
                for j, (_, ts, noun) in enumerate(w.attributes)
                if words[2:4] == ts[0].split()[:2] or noun in words
            )
            ans = w.index[w.values[a][w.facts[person, a]]]
            logits[i, -1, w.pad_id if person in self.wrong else ans] = 1.0
        return type("Out", (), {"logits": logits})()


def test_recall_is_exact_match() -> None:
    w = KnowledgeWorld(12, 2, 4, seed=0)
    assert recall(Oracle(w, set()), w, "bio") == 1.0
    assert recall(Oracle(w, set(range(6))), w, "bio") == 0.5
    assert recall(Oracle(w, set()), w, "question", w.heldout_people) == 1.0
    assert np.isnan(recall(Oracle(w, set()), w, "bio", np.array([], dtype=int)))


class Constant(torch.nn.Module):
    """Always predicts one token."""

    def __init__(self, vocab: int, token: int) -> None:
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, x: torch.Tensor):
        logits = torch.zeros(x.shape[0], x.shape[1], self.vocab)
        logits[:, -1, self.token] = 1.0
        return type("Out", (), {"logits": logits})()


def test_answer_type_counts_any_value_of_the_asked_attribute() -> None:
    w = KnowledgeWorld(12, 2, 4, seed=0)
    # The oracle answers every fact (right type); a wrong person gets <pad> (wrong type).
    assert recall_and_type(Oracle(w, set()), w, "bio") == (1.0, 1.0)
    assert recall_and_type(Oracle(w, set(range(6))), w, "bio") == (0.5, 0.5)
    # Always the first city: right type for the 12 city prompts only, right value where it is the fact.
    city = w.values[0][0]
    exact, typed = recall_and_type(Constant(len(w.vocab), w.index[city]), w, "bio")
    assert typed == 0.5
    assert exact == float((w.facts[:, 0] == 0).sum()) / 24


def test_shuffled_chapters_move_every_routed_chapter_and_keep_the_shared(tiny_moc) -> None:
    model = tiny_moc()
    bank = model.banks[0]
    before = bank.weight.detach().view(bank.n_chapters, bank.chapter_size, -1).clone()
    after = chapters_shuffled(model, seed=3).banks[0].weight.detach().view_as(before)
    assert torch.equal(after[0], before[0])  # the shared chapter stays
    for c in range(1, bank.n_chapters):
        assert not torch.equal(after[c], before[c])  # no routed chapter keeps its own content
        assert sum(torch.equal(after[c], before[j]) for j in range(1, bank.n_chapters)) == 1
    assert torch.equal(bank.weight.detach().view_as(before), before)  # the original is untouched


def test_memory_off_removes_the_read_only(tiny_moc) -> None:
    model = make_memory_matter(tiny_moc(), std=0.5)
    x = torch.randint(0, 50, (2, 7))
    off = memory_off(model)
    with torch.no_grad():
        assert not torch.allclose(model(x).logits, off(x).logits)
        before = off(x).logits
        torch.nn.init.normal_(off.banks[0].weight if hasattr(off.banks[0], "weight") else next(
            off.banks[0].parameters()), std=1.0)  # fmt: skip
        assert torch.equal(off(x).logits, before)  # the bank no longer matters
    assert model.layers[1].memory.o_proj.weight.abs().sum() > 0  # the original is untouched


def test_flops_axes() -> None:
    cfg = load_capacity("capacity")
    dense = model_config(cfg, "dense_backbone", 600, 40)
    fl = flops_per_token(dense, 40, 32)
    assert fl["inference"] == count_flops(dense, 40)["forward"] / 40  # nothing cached in a dense model
    assert fl["train"] == pytest.approx(3 * fl["inference"])
    small, big = (
        flops_per_token(model_config(cfg, k, 600, 40), 40, 32) for k in ("moc_token_2k", "moc_token_32k")
    )
    # Constant tokens read: with the bank's K/V cached, only the router's scoring (and the count's small
    # weighting term, which follows the chapters touched) grows with the bank.
    grow = 0.0
    for k, sign in (("moc_token_32k", 1), ("moc_token_2k", -1)):
        terms = count_flops(model_config(cfg, k, 600, 40), 40)["breakdown"]["memory_layer"]["terms"]
        grow += (
            sign
            * sum(
                terms[t] for t in ("router.linear", "router.softmax", "router.topk", "preprocess.weighting")
            )
            / 40
        )
    assert big["inference"] - small["inference"] == pytest.approx(grow)
    assert big["train"] - small["train"] > 3 * grow  # training also re-projects the chapters it reads


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="models.x: unknown key"):
        load_capacity("capacity-smoke", ["models.x={bank_lr: 1}"])
    with pytest.raises(ConfigError, match="compare"):
        load_capacity("capacity-smoke", ["compare=[[moc_token, nope]]"])
    with pytest.raises(ConfigError, match="bank_lr_scale"):
        load_capacity("capacity-smoke", ["models.moc_token.bank_lr_scale=fast"])
    with pytest.raises(ConfigError, match="unknown key world.people"):
        load_capacity("capacity-smoke", ["world.people=3"])
    with pytest.raises(ConfigError, match="no capacity preset"):
        load_capacity("capacity-nope")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("capacity") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "capacity-smoke", "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "results.json").read_text()), buf.getvalue()


def test_smoke_outputs(smoke: tuple[Path, dict, str]) -> None:
    out, results, printed = smoke
    for name in ("report.md", "recall_vs_flops.png", "memory_off.png", "loss_curves.png"):
        assert (out / name).is_file(), name
    assert "| model |" in printed and "memory off" in printed
    exp = load_capacity("capacity-smoke")
    assert set(results["runs"]) == set(exp.models)
    for key, runs in results["runs"].items():
        assert [r["seed"] for r in runs] == exp.seed_list
        for r in runs:
            assert 0 <= r["recall"]["bio"] <= 1 and r["tokens"] > 0 and len(r["loss_curve"]) > 1
            assert ("recall_memory_off" in r) == (key == "moc_token")
            assert ("type_accuracy_memory_off" in r) == (key == "moc_token")
            assert r["recall"]["bio"] <= r["type_accuracy"]["bio"] <= 1  # a right value is of the right type
            assert ("recall_shuffled" in r) == (key == "moc_token")
    assert (
        results["models"]["dense_d24"]["flops_per_token"]["train"]
        > results["models"]["dense_backbone"]["flops_per_token"]["train"]
    )
    buf = io.StringIO()
    (out / "report.md").unlink()
    with contextlib.redirect_stdout(buf):
        assert main(["report", str(out)]) == 0  # `moc-lab report` rebuilds a capacity report
    assert "| model | seeds |" in buf.getvalue()
    report = (out / "report.md").read_text()
    assert "MoC token" in report and "![recall_vs_flops](recall_vs_flops.png)" in report


def test_smoke_deterministic(smoke: tuple[Path, dict, str]) -> None:
    """The same seed gives the same run, in a worker process or here."""
    _, results, _ = smoke
    exp = load_capacity("capacity-smoke")
    first = results["runs"]["moc_token"][0]
    again = train_run(
        CapacityJob(key="moc_token", seed=first["seed"], steps=first["steps"], experiment=exp.to_dict())
    )
    assert again["loss_curve"] == first["loss_curve"] and again["recall"] == first["recall"]
    other = results["runs"]["moc_token"][1]
    assert other["loss_curve"] != first["loss_curve"]  # seeds differ


def test_smoke_retention(smoke: tuple[Path, dict, str]) -> None:
    """IFT runs per bank treatment for MoC and once for dense models; a frozen bank does not move."""
    out, results, _ = smoke
    for key, runs in results["runs"].items():
        for r in runs:
            ift = r["ift"]
            if key == "moc_token":
                assert set(ift) == {"frozen", "low_lr"}
                assert ift["frozen"]["bank_max_change"] == 0.0 and ift["low_lr"]["bank_max_change"] > 0
                assert "chat_heldout" in ift["frozen"]["recall_memory_off"]
            else:
                assert set(ift) == {"full"} and "bank_max_change" not in ift["full"]
            assert all(0 <= v <= 1 for v in ift[next(iter(ift))]["recall"].values())
    assert "Retention" in (out / "report.md").read_text()


def test_demo_runs_the_knowledge_world_and_the_text_on_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`moc-lab demo` = capacity-bits-demo into OUT/knowledge (--set applies to it); with --text then the
    `demo` experiment into OUT (--set applies to that one)."""
    import moc_experiments.experiment.capacity as cap
    import moc_experiments.experiment.protocol.runner as runner

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(cap, "run_capacity", lambda cfg, progress: calls.append(("knowledge", cfg)) or {})
    monkeypatch.setattr(runner, "run_experiment", lambda exp, progress: calls.append(("text", exp)) or {})
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", "--set", "ift.steps=7"]) == 0
    ((_, cfg),) = calls
    assert cfg.name == "capacity-bits-demo" and cfg.run_dir == tmp_path / "knowledge" and cfg.seeds == 2
    assert cfg.ift.steps == 7 and cfg.world.kind == "compositional"
    calls.clear()
    assert main(["demo", "--out", str(tmp_path), "--text", "--set", "pretrain.steps=5"]) == 0
    (_, cfg), (second, exp) = calls
    assert cfg.ift.steps == load_capacity("capacity-bits-demo").ift.steps
    assert second == "text" and exp.name == "demo" and exp.pretrain.steps == 5 and exp.run_dir == tmp_path


def test_resume_trains_only_missing_runs(
    smoke: tuple[Path, dict, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun reuses finished (model, seed) runs of the same recipe and trains only what is missing."""
    import shutil

    import moc_experiments.experiment.capacity as cap
    import moc_experiments.experiment.capacity.pipeline as pipeline

    out, results, _ = smoke
    shutil.copy(out / "results.json", tmp_path / "results.json")
    trained: list[tuple[str, int]] = []

    def fake(job) -> dict:
        trained.append((job.key, job.seed))
        return {**results["runs"][job.key][0], "seed": job.seed}

    monkeypatch.setattr(pipeline, "train_run", fake)
    seeds = len(results["runs"]["moc_token"])
    again = cap.run_capacity(
        load_capacity("capacity-smoke", [f"out_dir={tmp_path}", f"seeds={seeds + 1}"]), False
    )
    new_seed = load_capacity("capacity-smoke").seed + seeds
    assert sorted(trained) == sorted((k, new_seed) for k in results["runs"])
    assert again["runs"]["moc_token"][0] == results["runs"]["moc_token"][0]
    assert not list(tmp_path.glob("results.prev-*.json"))  # every earlier run was carried over
    trained.clear()
    cap.run_capacity(load_capacity("capacity-smoke", [f"out_dir={tmp_path}", "train.lr=0.02"]), False)
    assert len(trained) == len(results["runs"]) * seeds  # another recipe: nothing reused
    # ... and the earlier runs were kept aside, not overwritten
    assert json.loads((tmp_path / "results.prev-1.json").read_text())["runs"] == again["runs"]
    # fewer seeds than before: the dropped seeds' runs are kept aside too
    cap.run_capacity(
        load_capacity("capacity-smoke", [f"out_dir={tmp_path}", "train.lr=0.02", "seeds=1"]), False
    )
    assert json.loads((tmp_path / "results.prev-2.json").read_text())["config"]["seeds"] == seeds


def test_real_text_report_colours_are_per_run() -> None:
    """The real-text report: one colour per model in every plot; a dense model's IFT run keeps its colour."""
    from moc_experiments.experiment.protocol.plots import run_colors

    results = {
        "models": {"moc": {}, "dense_backbone": {}, "dense_isoflop": {}, "moc_sequence": {}},
        "ift_runs": {"moc_frozen": {}, "moc_low_lr": {}, "dense_backbone": {}, "dense_isoflop": {}},
    }
    colors = run_colors(results)
    assert set(colors) == {
        "moc",
        "dense_backbone",
        "dense_isoflop",
        "moc_sequence",
        "moc_frozen",
        "moc_low_lr",
    }
    assert len(set(colors.values())) == len(colors)
    assert run_colors({"models": results["models"]})["dense_isoflop"] == colors["dense_isoflop"]


def test_plan_trains_nothing(tmp_path: Path) -> None:
    """`moc-lab run capacity-smoke --plan` prints steps, models and FLOPs, and writes no results."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "capacity-smoke", "--plan", "--out", str(tmp_path / "p")]) == 0
    text = buf.getvalue()
    exp = load_capacity("capacity-smoke")
    n = len(exp.models) * exp.seeds
    assert f"= {n} runs; 0 already run" in text and f"{n} to train" in text
    for m in exp.models.values():
        assert m["label"] in text
    assert not (tmp_path / "p" / "results.json").exists()

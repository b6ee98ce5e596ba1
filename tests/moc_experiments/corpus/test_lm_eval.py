"""The generated probe tasks load and score in a real, offline lm-evaluation-harness run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moc_experiments.corpus import build_corpus
from moc_experiments.corpus.probes import prompt

from .fakes import make_fake_roots

lm_eval = pytest.importorskip("lm_eval")
LM = pytest.importorskip("lm_eval.api.model").LM


class _ScoreLM(LM):
    """Fixed log-likelihoods: ``score(context, continuation)``; never generates."""

    def __init__(self, score) -> None:
        super().__init__()
        self.score = score
        self.contexts: set[str] = set()

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            context, continuation = req.args
            self.contexts.add(context)
            out.append((float(self.score(context, continuation)), False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_probes_score_in_lm_eval(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    # Environment report only (it shells out to pip and friends for seconds): not what is tested here.
    monkeypatch.setattr("lm_eval.evaluator.add_env_info", lambda results: None)
    from lm_eval.tasks import TaskManager

    roots = make_fake_roots(tmp_path / "src")
    paths = build_corpus(
        tmp_path / "out",
        roots=roots,
        relations=["element_symbol", "wordnet_type"],
        max_facts_per_relation=40,
        max_text_mb=0.3,
        n_ift=20,
        n_ift_val=2,
        verbose=False,
    )
    records = {
        t: [json.loads(x) for x in (paths.probes_dir / f"{t}.jsonl").read_text().splitlines()]
        for t in (*paths.probe_tasks, paths.all_facts_task)
    }
    manager = TaskManager(include_path=str(paths.probes_dir), include_defaults=False)

    # 1. Shorter choices score higher: lm-eval's acc must equal our own argmax over the choices; acc_norm
    #    divides by the choice's length without the leading space, -(n+1)/n, which favours longer ones.
    lm = _ScoreLM(lambda ctx, cont: -len(cont))
    res = lm_eval.simple_evaluate(
        model=lm, tasks=[paths.probe_group], task_manager=manager, bootstrap_iters=0, log_samples=False
    )
    for task in paths.probe_tasks:
        expect_acc = np.mean(
            [int(np.argmax([-len(" " + c) for c in r["choices"]])) == r["label"] for r in records[task]]
        )
        expect_norm = np.mean(
            [
                int(np.argmax([-(len(c) + 1) / len(c) for c in r["choices"]])) == r["label"]
                for r in records[task]
            ]
        )
        got = res["results"][task]
        assert got["acc,none"] == pytest.approx(expect_acc), task
        assert got["acc_norm,none"] == pytest.approx(expect_norm), task
        assert got["sample_len"] == len(records[task])
    n = sum(len(records[t]) for t in paths.probe_tasks)
    weighted = sum(res["results"][t]["acc,none"] * len(records[t]) for t in paths.probe_tasks) / n
    assert res["results"][paths.probe_group]["acc,none"] == pytest.approx(weighted)
    assert lm.contexts == {prompt(r) for t in paths.probe_tasks for r in records[t]}  # the prompt format

    # 2. An oracle that knows every answer scores 1.0 on the all-facts task.
    answers = {prompt(r): r["answer"] for r in records[paths.all_facts_task]}
    oracle = _ScoreLM(lambda ctx, cont: 0.0 if cont == " " + answers[ctx] else -9.0)
    res = lm_eval.simple_evaluate(
        model=oracle, tasks=[paths.all_facts_task], task_manager=manager, bootstrap_iters=0, log_samples=False
    )
    assert res["results"][paths.all_facts_task]["acc,none"] == 1.0
    assert res["results"][paths.all_facts_task]["sample_len"] == len(records[paths.all_facts_task])

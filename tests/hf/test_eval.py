"""lm-evaluation-harness on moc models, offline, with a local multiple-choice task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from moc.cli import main
from moc.hf import HFError, export, from_moc_model
from moc.hf.evaluation import SEQUENCE_ROUTING_WARNING, _check_tasks, evaluate

QUESTIONS = [
    ("France", ["Paris", "Rome", "Madrid"], 0),
    ("Italy", ["Paris", "Rome", "Madrid"], 1),
    ("Spain", ["Paris", "Rome", "Madrid"], 2),
    ("Peru", ["Lima", "Rome", "Madrid"], 0),
]


@pytest.fixture
def task_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    d = tmp_path / "tasks"
    d.mkdir()
    data = d / "capitals.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is the capital of {c}?", "choices": ch, "label": y}) + "\n"
            for c, ch, y in QUESTIONS
        )
    )
    (d / "local_capitals.yaml").write_text(
        "task: local_capitals\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {data}}}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list: [{metric: acc}, {metric: acc_norm}]\n"
    )
    return d


def test_moc_eval_writes_results_next_to_the_checkpoint(make_checkpoint, task_dir: Path, capsys) -> None:
    ckpt, _ = make_checkpoint()
    args = [
        "eval",
        str(ckpt),
        "--tasks",
        "local_capitals",
        "--include-path",
        str(task_dir),
        "--device",
        "cpu",
    ]
    assert main([*args, "--limit", "4", "--batch-size", "2"]) == 0
    summary = json.loads((ckpt / "eval_results.json").read_text())
    result = summary["results"]["local_capitals"]
    assert 0 <= result["acc,none"] <= 1 and 0 <= result["acc_norm,none"] <= 1
    assert summary["n-samples"]["local_capitals"]["effective"] == 4
    assert summary["config"]["routing"] == "causal" and summary["config"]["loglikelihood_valid"]
    assert "local_capitals" in capsys.readouterr().out


def test_sequence_routed_models_are_evaluated_with_a_warning(
    make_core, tok_dir, task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("moc.errors._WARNED", set())  # the warning is once per process
    model = from_moc_model(make_core("memory.routing=sequence"))
    with pytest.warns(UserWarning, match="sequence routing, which is not causal"):
        summary = evaluate(model, ["local_capitals"], include_path=task_dir, tokenizer=tok_dir, limit=2)
    assert summary["config"]["loglikelihood_valid"] is False
    assert summary["n-samples"]["local_capitals"]["effective"] == 2
    assert "continuation" in SEQUENCE_ROUTING_WARNING


def test_eval_errors_name_the_fix(make_checkpoint, tmp_path: Path) -> None:
    with pytest.raises(HFError, match="did you mean local_capitals"):
        _check_tasks(SimpleNamespace(all_tasks=["local_capitals"]), ["local_capital"], None)
    with pytest.raises(HFError, match="not a folder of lm-eval task YAML"):
        evaluate(tmp_path, "x", include_path=tmp_path / "none")
    with pytest.raises(HFError, match="no tasks given"):
        evaluate(tmp_path, " , ")


def test_lm_eval_own_loader_scores_the_exported_model_like_the_core_model(
    make_checkpoint, task_dir: Path, tmp_path: Path
) -> None:
    """lm-eval's own ``hf`` model loader (what ``lm_eval --model hf`` runs, in-process: no CLI start-up,
    no index of lm-eval's built-in tasks) on the exported folder with its remote code. Every
    per-choice loglikelihood must equal the one computed here directly from the core MoCModel."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    ckpt, core = make_checkpoint()
    out = export(ckpt, tmp_path / "export")
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={out},trust_remote_code=True",
        tasks=["local_capitals"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        device="cpu",
        limit=4,
        log_samples=True,
        bootstrap_iters=0,
    )
    tok = AutoTokenizer.from_pretrained(out)
    samples = res["samples"]["local_capitals"]
    assert len(samples) == 4
    hits = []
    for sample in samples:
        lls = []
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            # lm-eval's convention: the continuation's tokens are those after the context's tokens
            ctx = tok(context, add_special_tokens=False).input_ids
            whole = tok(context + continuation, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = core(torch.tensor([whole])).logits[0].float().log_softmax(-1)
            ll = sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
            assert resp[0][0] == pytest.approx(ll, abs=1e-4)
            lls.append(ll)
        assert max(lls) - min(lls) > 1e-3  # the choices are told apart, so the comparison has teeth
        hits.append(float(max(range(len(lls)), key=lls.__getitem__) == sample["target"]))
    assert res["results"]["local_capitals"]["acc,none"] == pytest.approx(sum(hits) / len(hits))
    ours = evaluate(out, "local_capitals", include_path=task_dir, limit=4)["results"]["local_capitals"]
    assert ours["acc,none"] == res["results"]["local_capitals"]["acc,none"]
    assert ours["acc_norm,none"] == res["results"]["local_capitals"]["acc_norm,none"]


@pytest.mark.skipif(not os.environ.get("MOC_SLOW_TESTS"), reason="~40 s: set MOC_SLOW_TESTS=1 to run")
def test_lm_eval_cli_runs_an_exported_model(make_checkpoint, task_dir: Path, tmp_path: Path) -> None:
    ckpt, _ = make_checkpoint()
    out = export(ckpt, tmp_path / "export")
    lm_eval = Path(sys.executable).parent / "lm_eval"
    proc = subprocess.run(
        [
            str(lm_eval),
            "--model",
            "hf",
            "--model_args",
            f"pretrained={out},trust_remote_code=True",
            "--tasks",
            "local_capitals",
            "--include_path",
            str(task_dir),
            "--device",
            "cpu",
            "--limit",
            "4",
            "--output_path",
            str(tmp_path / "lm_eval_out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = evaluate(out, "local_capitals", include_path=task_dir, limit=4)["results"]["local_capitals"]
    files = list((tmp_path / "lm_eval_out").rglob("results_*.json"))
    got = json.loads(files[0].read_text())["results"]["local_capitals"]
    assert got["acc,none"] == expected["acc,none"] and got["acc_norm,none"] == expected["acc_norm,none"]


# --------------------------------------------------------------------------------------------------
# Outside a git checkout, and task files lm-eval cannot read
# --------------------------------------------------------------------------------------------------


def test_eval_outside_a_git_checkout_prints_no_git_error(
    make_checkpoint, task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    ckpt, _ = make_checkpoint()
    (tmp_path / "outside").mkdir()
    monkeypatch.chdir(tmp_path / "outside")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git must not find a checkout above
    args = ["eval", str(ckpt), "--tasks", "local_capitals", "--include-path", str(task_dir)]
    assert main([*args, "--device", "cpu", "--limit", "2"]) == 0
    assert "not a git repository" not in capfd.readouterr().err  # git's stderr is fd 2: capfd sees it


FAKE_GIT = {  # what a `git` on PATH prints and returns -> the hash recorded, what reaches stderr
    "outside a checkout": ("echo 'fatal: not a git repository (or any parent)' >&2; exit 128", None, ""),
    "a real git error": ("echo 'error: object file .git/objects/ab is empty' >&2; exit 128", None,
                         "error: object file .git/objects/ab is empty"),
    "inside a checkout": ("echo 1a2b3c4", "1a2b3c4", ""),
}  # fmt: skip


@pytest.mark.parametrize("case", [*FAKE_GIT, "git not installed"])
def test_the_git_hash_lm_eval_records_is_quiet_only_about_no_checkout(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    from moc.hf.evaluation import _git_commit_hash

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script, recorded, stderr = FAKE_GIT.get(case, ("", None, ""))
    if case in FAKE_GIT:
        (bin_dir / "git").write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # only the fake git (or none)
    monkeypatch.chdir(tmp_path)  # no .git folder to read a hash from either
    assert _git_commit_hash() == recorded
    assert capfd.readouterr().err.strip() == stderr


def test_a_malformed_task_yaml_is_named_not_an_unknown_task(
    make_checkpoint, task_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from fault_helpers import fails

    ckpt, _ = make_checkpoint()
    task = task_dir / "local_capitals.yaml"
    task.write_text(task.read_text().replace("test_split: test", "test_split: [test"))
    args = ["eval", str(ckpt), "--tasks", "local_capitals", "--include-path", str(task_dir)]
    fails(capsys, [*args, "--device", "cpu"], f"lm-eval task file {task} is not valid YAML at line 5",
          "did not find expected ',' or ']'")  # fmt: skip


def test_a_task_file_lm_eval_skips_is_named_with_the_unknown_task(tmp_path: Path) -> None:
    from moc.hf.evaluation import _unloadable_task_files

    (tmp_path / "mine.yaml").write_text("include: missing_template.yaml\ntask: mine\n")
    (tmp_path / "fine.yaml").write_text("task: fine\ndataset_path: json\n")
    unreadable = _unloadable_task_files(str(tmp_path))
    assert unreadable == [f"{tmp_path / 'mine.yaml'} ([Errno 2] No such file or directory: "
                          f"'{tmp_path / 'missing_template.yaml'}')"]  # fmt: skip
    with pytest.raises(HFError, match="unknown lm-eval task 'mine'.*lm-eval could not load .*mine.yaml"):
        _check_tasks(SimpleNamespace(all_tasks=["fine"]), ["mine"], str(tmp_path), unreadable)

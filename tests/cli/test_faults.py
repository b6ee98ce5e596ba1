"""The fault battery: bad input and failing environments give one line on stderr naming the path or
key, no traceback, exit status 2 (130 for Ctrl-C / SIGTERM), and lose nothing.

One tiny real run (BPE tokenizer, prepared data, 3 pretraining steps with a checkpoint each) is built
once with relative paths; each test damages its own copy.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fault_helpers import TRAIN, build_run, fails
from moc.cli import main
from moc.train import checkpoint
from moc_experiments.cli import main as lab_main


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with corpus/, tok/, data/ and run/ (checkpoints step 1..3), all made by the CLI with
    relative paths (so checkpoints record data.prepared_dir=data, relative to this folder)."""
    return build_run(tmp_path_factory.mktemp("faults"), steps=3)




def ckpt(step: int) -> Path:
    return Path("run/checkpoints") / checkpoint.step_dir_name(step)


def truncate(path: Path, keep: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def moc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "moc", *args]


def env1() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------
# Config parsing
# --------------------------------------------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(work: Path, capsys: pytest.CaptureFixture) -> None:
    Path("bad.yaml").write_text("model:\n  d_model: [64, 128\n")
    fails(capsys, ["info", "bad.yaml"], "config file bad.yaml is not valid YAML at line 3")
    fails(capsys, ["run", "bad.yaml"], "experiment file bad.yaml is not valid YAML", command=lab_main)


def test_binary_and_non_utf8_config(work: Path, capsys: pytest.CaptureFixture) -> None:
    Path("bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    fails(capsys, ["params", "bin.yaml"], "bin.yaml is not UTF-8 text", "binary")  # the 0xff byte
    Path("latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    fails(capsys, ["params", "latin1.yaml"], "latin1.yaml is not UTF-8 text (bad byte at offset 9)")


def test_directory_as_config(work: Path, capsys: pytest.CaptureFixture) -> None:
    fails(capsys, ["info", "corpus"], "config file corpus is a directory")
    fails(capsys, ["pretrain", "corpus"], "corpus is a directory")


def test_malformed_set_value_names_the_override(work: Path, capsys: pytest.CaptureFixture) -> None:
    fails(capsys, ["info", "tiny-moc", "--set", "memory.top_k=[1,"], "override 'memory.top_k=[1,'", "YAML")
    lab_run = ["run", "smoke", "--set", "pretrain.steps={"]
    fails(capsys, lab_run, "override 'pretrain.steps={'", command=lab_main)


def test_config_error_prints_once_under_torchrun(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")  # a non-zero rank stays quiet; rank 0 prints the one line
    assert main(["pretrain", "tiny-moc", "--set", "train.seq_len=1000"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    fails(capsys, ["pretrain", "tiny-moc", "--set", "train.seq_len=1000"], "train.seq_len=1000")


# --------------------------------------------------------------------------------------------------
# Damaged checkpoints: name the file; --resume falls back to the newest one that verifies
# --------------------------------------------------------------------------------------------------


def test_checkpoints_record_a_manifest_and_a_tokenizer(work: Path) -> None:
    manifest = json.loads((ckpt(3) / checkpoint.MANIFEST).read_text())["files"]
    assert set(checkpoint.REQUIRED_FILES) <= set(manifest) and "tokenizer/tokenizer.json" in manifest
    assert manifest[checkpoint.WEIGHTS]["bytes"] == (ckpt(3) / checkpoint.WEIGHTS).stat().st_size
    checkpoint.verify_checkpoint(ckpt(3))


def test_truncated_weights_are_named_by_every_command(work: Path, capsys: pytest.CaptureFixture) -> None:
    truncate(ckpt(3) / checkpoint.WEIGHTS)
    bad = str(ckpt(3) / checkpoint.WEIGHTS)
    gen = ["--prompt", "the cat", "--max-new-tokens", "2", "--device", "cpu"]
    fails(capsys, ["generate", str(ckpt(3)), *gen], bad, "truncated")
    fails(capsys, ["export", str(ckpt(3)), "out"], bad, "truncated")
    assert not Path("out").exists()
    init = ["pretrain", "tiny-moc", *TRAIN, "--set", "train.out_dir=other", "--set", "train.max_steps=4"]
    fails(capsys, [*init, "--init-from", str(ckpt(3))], bad)
    # without the manifest (a checkpoint from an older moc) loading itself names the file
    (ckpt(3) / checkpoint.MANIFEST).unlink()
    fails(capsys, ["generate", str(ckpt(3)), *gen], bad, "damaged")


def test_resume_falls_back_to_newest_checkpoint_that_verifies(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    truncate(ckpt(3) / checkpoint.WEIGHTS)
    data = bytearray((ckpt(2) / checkpoint.OPTIMIZER).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the hash catches it
    (ckpt(2) / checkpoint.OPTIMIZER).write_bytes(bytes(data))
    capsys.readouterr()
    assert (
        main(
            [
                "pretrain",
                "tiny-moc",
                *TRAIN,
                "--set",
                "train.out_dir=run",
                "--set",
                "train.max_steps=4",
                "--resume",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    weights = ckpt(3) / checkpoint.WEIGHTS
    assert f"skipping damaged checkpoint step_000003: {weights} has 100 bytes" in captured.err
    assert (
        f"skipping damaged checkpoint step_000002: {ckpt(2) / checkpoint.OPTIMIZER} does not match the sha256"
        in captured.err
    )
    assert "resuming from run/checkpoints/step_000001 at step 1" in captured.out + captured.err
    checkpoint.verify_checkpoint(ckpt(4))
    # a run dir given to generate also skips the damaged newest checkpoint (with a warning)
    truncate(ckpt(4) / checkpoint.WEIGHTS)
    capsys.readouterr()
    assert main(["generate", "run", "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert "skipping damaged checkpoint step_000004" in capsys.readouterr().err


def test_resume_when_no_checkpoint_verifies(work: Path, capsys: pytest.CaptureFixture) -> None:
    for step in (1, 2, 3):
        truncate(ckpt(step) / checkpoint.TRAINER_STATE, 10)
    capsys.readouterr()
    assert main(["pretrain", "tiny-moc", *TRAIN, "--set", "train.out_dir=run", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no checkpoint in run/checkpoints verifies" in err
    assert err.count("skipping damaged checkpoint") == 3


@pytest.mark.parametrize("name", [checkpoint.OPTIMIZER, checkpoint.TRAINER_STATE])
def test_truncated_torch_files_without_manifest(work: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    for step in (1, 2, 3):
        (ckpt(step) / checkpoint.MANIFEST).unlink()
    truncate(ckpt(3) / name)
    resume = ["pretrain", "tiny-moc", *TRAIN, "--set", "train.out_dir=run", "--resume"]
    fails(capsys, resume, f"{ckpt(3) / name} is damaged or not a moc checkpoint file")


def test_resume_with_changed_seq_len(work: Path, capsys: pytest.CaptureFixture) -> None:
    resume = [
        "pretrain",
        "tiny-moc",
        *TRAIN,
        "--set",
        "train.out_dir=run",
        "--resume",
        "--set",
        "train.seq_len=16",
    ]
    fails(capsys, resume, "cannot resume from run/checkpoints/step_000003", "train.seq_len changed")


# --------------------------------------------------------------------------------------------------
# File system: disk full, a file where a folder should be, permissions
# --------------------------------------------------------------------------------------------------


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def full_disk(obj: object, f: str | os.PathLike, *a: object, **k: object) -> None:
        Path(f).write_bytes(b"PK\x03\x04 partial")  # what a full disk leaves: the start of the file
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    resume = [
        "pretrain",
        "tiny-moc",
        *TRAIN,
        "--set",
        "train.out_dir=run",
        "--set",
        "train.max_steps=4",
        "--resume",
    ]
    fails(
        capsys,
        resume,
        "could not write checkpoint run/checkpoints/step_000004",
        "full disk",
        "step_000003 is intact",
    )
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in Path("run/checkpoints").iterdir()) == [
        "best", "latest", "step_000001", "step_000002", "step_000003",
    ]  # fmt: skip
    checkpoint.verify_checkpoint(ckpt(3))


def test_disk_full_while_preparing_data_keeps_the_old_data(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moc.data.prepare as prep

    before = Path("data/meta.json").read_text()

    def full_disk(tmp: Path, *a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "train.tokens.bin"))

    monkeypatch.setattr(prep, "_write_splits", full_disk)
    prepare = ["data", "prepare", "corpus", "--tokenizer", "tok", "--out", "data", "--force", "--no-progress"]
    fails(capsys, prepare, "train.tokens.bin: No space left on device")
    assert Path("data/meta.json").read_text() == before
    assert not [p for p in Path("data").iterdir() if p.name.startswith(".tmp")]


def test_disk_full_while_exporting_keeps_the_old_export(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moc.hf.modeling_moc import MoCForCausalLM

    assert main(["export", "run", "out"]) == 0
    before = sorted(p.name for p in Path("out").iterdir())

    def full_disk(self: object, path: str, *a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "model.safetensors"))

    monkeypatch.setattr(MoCForCausalLM, "save_pretrained", full_disk)
    fails(
        capsys,
        ["export", "run", "out", "--force"],
        "could not write the export out",
        "No space left on device",
    )
    assert sorted(p.name for p in Path("out").iterdir()) == before
    assert not [p for p in work.iterdir() if p.name.startswith(".tmp")]


def test_outputs_that_are_files(work: Path, capsys: pytest.CaptureFixture) -> None:
    Path("afile").write_text("precious")
    fails(capsys, ["export", "run", "afile", "--force"], "afile is a file, not a folder")
    fails(
        capsys, ["data", "prepare", "corpus", "--tokenizer", "tok", "--out", "afile"], "--out afile is a file"
    )
    fails(
        capsys,
        ["tokenizer", "train", "corpus", "--vocab-size", "300", "--out", "afile"],
        "--out afile is a file",
    )
    fails(capsys, ["export", "run", "tok"], "tok exists and is not empty", "--force")
    train = ["pretrain", "tiny-moc", *TRAIN, "--set", "train.max_steps=4"]
    fails(capsys, [*train, "--set", "train.out_dir=afile"], "train.out_dir=afile is a file")
    fails(capsys, [*train, "--init-from", "no/such"], "no checkpoint found at no/such")
    assert Path("afile").read_text() == "precious"


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_exports_and_checkpoints_honour_the_umask(work: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        assert main(["export", "run", "out"]) == 0
        resume = ["pretrain", "tiny-moc", *TRAIN, "--set", "train.out_dir=run", "--set", "train.max_steps=4"]
        assert main([*resume, "--resume"]) == 0
        assert main(["tokenizer", "train", "--vocab-size", "300", "corpus", "--out", "tok2"]) == 0
        assert main(["data", "prepare", "corpus", "--tokenizer", "tok2", "--out", "data2"]) == 0
    finally:
        os.umask(old)
    for root in (Path("out"), ckpt(4), Path("tok2"), Path("data2")):
        for p in [root, *root.rglob("*")]:
            want = (0o777 if p.is_dir() else 0o666) & ~umask
            assert stat.S_IMODE(p.stat().st_mode) == want, f"{p}: {oct(p.stat().st_mode)}"


def test_generate_and_export_from_another_directory(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The checkpoint's config says data.prepared_dir=data (relative); its own tokenizer copy is used."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert (
        main(
            ["generate", str(work / "run"), "--prompt", "the cat", "--max-new-tokens", "3", "--device", "cpu"]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["export", str(work / "run"), "x-hf"]) == 0
    assert (elsewhere / "x-hf" / "tokenizer.json").is_file()


def test_missing_report_run(work: Path, capsys: pytest.CaptureFixture) -> None:
    fails(capsys, ["report", "nothing-here"], "nothing-here")


# --------------------------------------------------------------------------------------------------
# Processes: Ctrl-C, SIGTERM, a closed pipe (real subprocesses)
# --------------------------------------------------------------------------------------------------


def _start_training(out: str) -> subprocess.Popen:
    endless = ["--set", "train.max_steps=100000", "--set", "train.save_every=0"]
    cmd = moc_cmd("pretrain", "tiny-moc", *TRAIN, "--set", f"train.out_dir={out}", *endless)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env1())


def _wait_for_steps(out: str, proc: subprocess.Popen, n: int = 2, timeout: float = 60.0) -> None:
    metrics = Path(out) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if metrics.is_file() and metrics.read_text().count('"kind": "train"') >= n:
            return
        time.sleep(0.1)
    raise AssertionError("training did not start")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_exits_130(work: Path, sig: signal.Signals) -> None:
    proc = _start_training("sig")
    _wait_for_steps("sig", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"moc pretrain: stopped by {sig.name} after step ") and "--resume" in last
    step = int(last.split("after step ")[1].split(";")[0])
    saved = Path("sig/checkpoints") / checkpoint.step_dir_name(step)
    checkpoint.verify_checkpoint(saved)
    rows = [json.loads(x) for x in Path("sig/metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows if r["kind"] == "train") == step  # nothing trained after the save
    if sig == signal.SIGINT:  # --resume continues from it
        resume = moc_cmd("pretrain", "tiny-moc", *TRAIN, "--set", "train.out_dir=sig", "--set",
                         f"train.max_steps={step + 1}", "--resume")  # fmt: skip
        done = subprocess.run(resume, capture_output=True, text=True, env=env1(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"resuming from {saved} at step {step}" in done.stdout + done.stderr
        assert f"done, step {step + 1}" in done.stdout


def test_closed_pipe_exits_quietly(work: Path) -> None:
    proc = subprocess.Popen(
        moc_cmd("info", "paper-moc"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env1()
    )
    proc.stdout.close()  # the reader is gone before moc writes, as with `moc info paper-moc | head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_ctrl_c_outside_training(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import moc.cli.accounting as acc

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(acc, "count_params", interrupted)
    fails(capsys, ["params", "tiny-moc"], "moc params: interrupted", code=130)

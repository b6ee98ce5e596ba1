"""Values that cannot make sense are refused when the config loads, in one line naming the key and the
fix: NaN and infinities anywhere, negative rates and counts, impossible worlds; and config files that
would hang or explode (a FIFO, /dev/null, an empty file, an alias bomb, nesting 5,000 deep)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fault_helpers import fails
from moc_experiments.cli import main as lab_main

# (override of tiny-moc, what the one line must say): each was accepted before and trained or built
RUN_VALUES = [
    ("train.lr=.nan", "train.lr is nan; give a finite number"),
    ("train.lr=-0.001", "train.lr must be >= 0"),
    ("train.memory_lr=-1", "train.memory_lr must be >= 0"),
    ("train.grad_clip=.inf", "train.grad_clip is inf"),
    ("train.weight_decay=-0.1", "train.weight_decay must be >= 0"),
    ("train.beta2=1.5", "train.beta2 must be in [0, 1)"),
    ("train.eps=0", "train.eps must be positive"),
    ("train.keep_last=-1", "train.keep_last must be >= 0"),
    ("train.save_every=-5", "train.save_every must be >= 0"),
    ("memory.routed_scaling_factor=-1", "memory.routed_scaling_factor must be positive"),
    ("memory.load_balance_coef=-0.01", "memory.load_balance_coef must be >= 0"),
    ("model.rope_theta=0", "model.rope_theta must be positive"),
    ("model.norm_eps=-1", "model.norm_eps must be positive"),
    ("model.init_std=.nan", "model.init_std is nan"),
    ("data.val_fraction=1", "data.val_fraction must be in [0, 1)"),
]


@pytest.mark.parametrize(("override", "says"), RUN_VALUES, ids=[o for o, _ in RUN_VALUES])
def test_run_config_values_that_cannot_make_sense(
    capsys: pytest.CaptureFixture, override: str, says: str
) -> None:
    fails(capsys, ["info", "tiny-moc", "--set", override], says)
    fails(capsys, ["pretrain", "tiny-moc", "--set", override], says)  # refused before any data is read


# (experiment, override, what the one line must say)
LAB_VALUES = [
    ("capacity-bits-smoke", "train.lr=.nan", "train.lr is nan"),
    ("capacity-bits-smoke", "train.lr=-0.003", "train.lr must be positive"),
    ("capacity-bits-smoke", "workers=-1", "capacity.workers must be >= 0"),
    ("capacity-bits-smoke", "threads=0", "capacity.threads must be >= 1"),
    ("capacity-bits-smoke", "ift.steps=-3", "ift.steps must be >= 0"),
    ("capacity-bits-smoke", "ift.batch_size=0", "ift.batch_size must be positive"),
    ("capacity-bits-smoke", "models.moc_2k.lr_scale=.nan", "models.moc_2k.lr_scale is nan"),
    ("capacity-bits-smoke", "base.memory.routed_scaling_factor=-1", "memory.routed_scaling_factor"),
    ("capacity-bits-smoke", "world.n_people=0", "world.n_people must be >= 2"),
    ("capacity-bits-smoke", "world.n_people=100000", "more than the"),
    ("capacity-bits-smoke", "world.n_values=1", "world.n_values must be >= 2"),
    ("capacity-bits-smoke", "world.n_attributes=0", "world.n_attributes must be in [1, 8]"),
    ("capacity-bits-smoke", "world.first_names=0", "world.first_names must be >= 1"),
    ("capacity-bits-smoke", "world.qa_fraction=1.5", "world.qa_fraction must be in [0, 1)"),
    ("capacity-smoke", "world.n_people=1", "world.n_people must be >= 2"),
    ("smoke", "pretrain.lr=.nan", "pretrain.lr is nan"),
    ("smoke", "moc.train.lr=-1", "train.lr must be >= 0"),
]


@pytest.mark.parametrize(
    ("experiment", "override", "says"), LAB_VALUES, ids=[f"{e}:{o}" for e, o, _ in LAB_VALUES]
)
def test_experiment_values_that_cannot_make_sense(
    capsys: pytest.CaptureFixture, experiment: str, override: str, says: str
) -> None:
    fails(capsys, ["config", "show", experiment, "--set", override], says, command=lab_main)


def test_the_compositional_world_needs_every_name_shared(capsys: pytest.CaptureFixture) -> None:
    over = ["--set", "world.n_people=100", "--set", "world.first_names=64"]
    fails(capsys, ["config", "show", "capacity-bits-smoke", *over], "less than twice the larger name pool",
          command=lab_main)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Config files that would hang, explode, or silently mean "every default"
# --------------------------------------------------------------------------------------------------


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines)


def _files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one line says)."""
    fifo = tmp / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would wait forever for a writer
    bomb = "name: x\nlabel:\n  " + _bomb().replace("\n", "\n  ") + "\n"
    files = {
        "empty": (tmp / "empty.yaml", "", "is empty"),
        "comments only": (tmp / "comments.yaml", "# nothing yet\n", "is empty"),
        "deep": (tmp / "deep.yaml", "model: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than 64"),
        "alias bomb": (tmp / "bomb.yaml", bomb, "expands to more than 100,000 values"),
        "too big": (tmp / "big.yaml", "# " + "x" * (2 << 20) + "\n", "more than a config's"),
    }
    out = {name: (path, says) for name, (path, text, says) in files.items()}
    for path, text, _ in files.values():
        path.write_text(text)
    out["fifo"] = (fifo, "is not a regular file")
    out["/dev/null"] = (Path("/dev/null"), "is not a regular file")
    return out


CASES = ["empty", "comments only", "deep", "alias bomb", "too big", "fifo", "/dev/null"]


@pytest.fixture
def deadline() -> Iterator[None]:
    """A hang fails the test after 60 s instead of stalling the suite."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("hung: the command did not return within 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES)
def test_config_files_that_would_hang_or_explode(
    tmp_path: Path, capsys: pytest.CaptureFixture, deadline: None, case: str
) -> None:
    path, says = _files(tmp_path)[case]
    fails(capsys, ["params", str(path)], str(path), says)
    fails(capsys, ["config", "show", str(path)], says, command=lab_main)


def test_an_alias_bomb_in_an_override_is_refused(capsys: pytest.CaptureFixture) -> None:
    flow = "{" + _bomb().replace("\n", ", ") + "}"
    fails(capsys, ["config", "show", "capacity-bits-smoke", "--set", f"models.moc_2k.label={flow}"],
          "expands to more than 100,000 values", command=lab_main)  # fmt: skip


@pytest.mark.parametrize("command", ["data prepare", "tokenizer train"])
def test_a_fifo_as_data_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, deadline: None, command: str
) -> None:
    os.mkfifo(tmp_path / "text.txt")
    args = ["--tokenizer", "tok"] if command == "data prepare" else ["--vocab-size", "300"]
    argv = [*command.split(), str(tmp_path / "text.txt"), *args, "--out", str(tmp_path / "out")]
    fails(capsys, argv, "text.txt is not a regular file (a FIFO or device)")


def test_an_error_about_a_huge_value_stays_short(capsys: pytest.CaptureFixture) -> None:
    line = fails(capsys, ["info", "tiny-moc", "--set", "model.d_model=" + "x" * 5_000_000], "model.d_model")
    assert len(line) < 400 and "5,000,002 characters" in line

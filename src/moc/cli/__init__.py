"""The ``moc`` command line. Each subcommand lives in its own module with a ``register(subparsers)``.

Errors are handled once, in :func:`run_command` (which :func:`main` and the lab's ``moc-lab`` call):
a :class:`~moc.errors.MocError` (bad config, data, checkpoint, ...) or an ``OSError`` (disk full,
permission denied, ...) becomes one line on stderr and exit status 2; Ctrl-C or SIGTERM exits 130
(training saves a checkpoint first); output cut short by a
closed pipe (``moc ... | head``) exits quietly. Subcommands just raise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from moc.errors import MocError, one_line, os_error_message

EXIT_ERROR = 2  # a MocError or OSError: the message says what to fix
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report when a reader such as `head` stops early

# One module per group of subcommands; each defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES = [
    "moc.cli.accounting",  # params, flops, isoflop, info
    "moc.cli.config",  # config show
    "moc.cli.data",  # tokenizer train, data prepare
    "moc.cli.train",  # pretrain, ift
    "moc.cli.moved",  # experiment, demo, report: now `moc-lab` (moc_experiments), a pointer for one release
    "moc.cli.hf",  # export, generate, chat, eval
    "moc.cli.router",  # router inspection
]


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The shared ``CONFIG [--set key.sub=value ...]`` arguments."""
    p.add_argument("config", help="preset name (e.g. tiny-moc, paper-moc) or path to a YAML config")
    add_overrides_arg(p)


def add_overrides_arg(p: argparse.ArgumentParser, example: str = "memory.top_k=16") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: dotted keys of any depth, YAML values."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moc", description="Mixture of Chapters memory transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def command_name(args: argparse.Namespace, prog: str = "moc") -> str:
    """``moc pretrain``, ``moc data prepare``, ... for error messages."""
    words = [getattr(args, "command", None)]
    words += [getattr(args, k, None) for k in ("data_command", "tokenizer_command", "config_command")]
    return " ".join([prog, *(w for w in words if w)])


def _is_main_rank() -> bool:
    """False on the non-zero ranks of a ``torchrun`` job, which stay quiet so errors print once."""
    return os.environ.get("RANK", "0") == "0"


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # schedulers send SIGTERM before killing a job: treat it like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run one ``moc`` command; returns the process exit status (0, 2 for errors, 130 if interrupted)."""
    return run_command(build_parser(), argv)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen subcommand's ``func`` with the error handling
    described above. Applications built on ``moc`` (``moc-lab``) reuse it for their own commands."""
    args = parser.parse_args(argv)
    name = command_name(args, parser.prog)
    previous_sigterm = None
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        except ValueError:  # not the main thread: leave signals alone
            previous_sigterm = None
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # surface a broken pipe here, inside the handler, not at interpreter exit
        return code
    except MocError as e:
        _report(name, one_line(e))
        return e.exit_code
    except KeyboardInterrupt:
        _report(name, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`moc ... | head`): nothing to report; keep Python from complaining
        # again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as e:  # disk full, permission denied, a file where a folder should be, ...
        _report(name, os_error_message(e))
        return EXIT_ERROR
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise  # a bug in moc: keep the traceback
        _report(name, out_of_memory_message(e))
        return EXIT_ERROR
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def is_out_of_memory(e: BaseException) -> bool:
    """A host ``MemoryError``, torch's ``OutOfMemoryError`` (a RuntimeError) or a RuntimeError whose
    message says so (CPU allocators: "DefaultCPUAllocator: not enough memory")."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return "out of memory" in text or "not enough memory" in text


def out_of_memory_message(e: BaseException) -> str:
    detail = one_line(e)[:200]
    return (
        f"out of memory ({detail}); reduce what one step holds: train.micro_batch_size (raise "
        "train.grad_accum_steps to keep the batch), train.seq_len, the model size, or --batch-size"
    )


def _report(name: str, message: str) -> None:
    if not _is_main_rank():
        return
    print(f"{name}: {message}", file=sys.stderr, flush=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:  # torchrun's failure summary then shows this line as the root cause, not a traceback
        line = f"{name}: {message}"
        data = {
            "message": {
                "message": line,
                "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))},
            }
        }
        with contextlib.suppress(OSError):
            Path(error_file).write_text(json.dumps(data))

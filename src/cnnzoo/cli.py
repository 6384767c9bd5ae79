"""The ``cnnzoo`` command line.

Each subcommand lives in ``cnnzoo/commands/<name>.py`` and exposes ``add_parser(subparsers)``
(which sets ``func``); heavy imports happen inside ``func``, so ``cnnzoo --help`` stays fast.

Exit codes: 0 success, 1 a failure while running (e.g. training diverged, a full disk), 2 bad
input, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cnnzoo.errors import Interrupted, TrainingDiverged, UserError, WriteFailed

COMMANDS = (
    "models",
    "summary",
    "train",
    "eval",
    "predict",
    "export",
    "compare",
    "gradflow",
    "degradation",
    "report",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like every other user error
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnzoo",
        description="Classic CNN architectures from their papers (VGG, ResNet and its plain "
        "twins, Inception, FastNet): train them on CIFAR, evaluate, predict, export, and rerun "
        "the papers' experiments.",
        epilog="`cnnzoo COMMAND --help` describes each command. Exit codes: 0 success, "
        "1 a failure while running, 2 bad input, 128+N stopped by signal N (130 Ctrl-C, 143 "
        "SIGTERM, 138 SIGUSR1).",
    )
    from cnnzoo import __version__

    parser.add_argument("--version", action="version", version=f"cnnzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"cnnzoo.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group the trainer joined (once, at the very end: a
    command like compare trains several runs in one group)."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 1
    except WriteFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:  # the run saved where it stopped (or says what it kept)
        if str(err):
            print(err, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # under torchrun: another rank died or stopped responding
        msg = _rank_failure(err)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


def _rank_failure(err: BaseException) -> str | None:
    if "torch.distributed" not in sys.modules:  # never a distributed run: nothing to describe
        return None
    from cnnzoo.train.runtime import describe_rank_failure

    return describe_rank_failure(err)


if __name__ == "__main__":
    sys.exit(main())

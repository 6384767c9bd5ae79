"""The error contract every reader of user files keeps, and a time-boxed Hypothesis driver.

Contract, per input (``check_contract``):

- ``call()`` returns a result, or raises ``cnnzoo.errors.UserError`` whose message is one
  non-empty line (what the CLI prints as ``error: ...`` with exit code 2); any other exception
  is a bug;
- it warns nothing (the CLI would print the warning: more than the promised line);
- it answers within ``CNNZOO_FUZZ_INPUT_SECONDS`` (default 10 s; a SIGALRM timer, so a blocked
  ``open()`` or a long decode is caught as a ``Hang``);
- nothing outside the target folder appears, changes or disappears (the folder around the target
  is listed, recursively, before and after).

``fuzz(name, strategy, body, keep)`` feeds Hypothesis examples to ``body`` for
``CNNZOO_FUZZ_SECONDS`` (default 60) and returns a ``Tally`` of the inputs tried. A new reader
(an image-folder dataset, say) becomes a fuzz target in a few lines: a strategy that writes an
input under the target folder, and a body that calls ``check_contract(lambda: reader(path),
target)`` and returns its ``outcome``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import signal
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cnnzoo.errors import UserError

RESULT, ERROR = "result", "error"


def budget_seconds() -> float:
    """Fuzzing time per target: ``CNNZOO_FUZZ_SECONDS`` (CI: the default 60; by hand, e.g. 600)."""
    return float(os.environ.get("CNNZOO_FUZZ_SECONDS", "60"))


def input_seconds() -> float:
    """The longest one input may take before it counts as a hang."""
    return float(os.environ.get("CNNZOO_FUZZ_INPUT_SECONDS", "10"))


class ContractBroken(AssertionError):
    """An input ended in a traceback other than UserError, a hang, or a write outside."""


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so the product's ``except Exception`` cannot turn
    a hang into an ordinary error."""


class Hang(BaseException):
    """An input that hung. Not an Exception, so Hypothesis stops at once instead of shrinking
    (each shrinking step would wait the full time limit again); ``fuzz`` keeps the input."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise _Hang

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def listing(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under ``root`` except inside ``skip``: files with size and mtime, links with
    their target, folders by name (``skip`` itself only by its existence)."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if here == skip:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = here / name
            st_ = p.lstat()
            if p == skip or (os.path.isdir(p) and not p.is_symlink()):
                out[str(p)] = ("dir",)
            elif p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            else:
                out[str(p)] = ("file", st_.st_size, st_.st_mtime_ns)
    return out


def check_contract(call: Callable[[], Any], target: Path) -> Any:
    """Run ``call()`` under the contract (module docstring); return its result or its UserError."""
    before = listing(target.parent, target)
    seconds = input_seconds()
    hung = False
    try:
        with warnings.catch_warnings(record=True) as caught, time_limit(seconds):
            warnings.simplefilter("always")
            out = call()
    except UserError as err:
        out = err
        text = str(err)
        if not text.strip() or "\n" in text or "\r" in text:
            raise ContractBroken(f"UserError message is not one line: {text!r}") from None
    except _Hang:
        hung = True
    if hung:
        raise Hang(f"no answer within {seconds:g} s")
    if caught:  # the CLI would print it: more than the one line (or the result) promised
        w = caught[0]
        raise ContractBroken(f"warned {w.category.__name__}: {w.message}")
    after = listing(target.parent, target)
    if before != after:
        changed = sorted(set(before.items()) ^ set(after.items()))
        raise ContractBroken(f"wrote outside the target folder {target}: {changed[:5]}")
    return out


def outcome(out: Any) -> str:
    return ERROR if isinstance(out, UserError) else RESULT


@dataclass
class Tally:
    """How many inputs a target tried, and how they ended."""

    target: str
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: {RESULT: 0, ERROR: 0})

    @property
    def inputs(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        return (
            f"fuzz {self.target}: {self.inputs} inputs in {self.seconds:.0f} s "
            f"({self.counts[RESULT]} results, {self.counts[ERROR]} one-line errors), "
            "none escaped the error contract"
        )

    def record(self) -> None:
        """Append a JSON line to ``$CNNZOO_FUZZ_REPORT`` when it is set (for the README)."""
        path = os.environ.get("CNNZOO_FUZZ_REPORT")
        if path:
            row = {"target": self.target, "seconds": round(self.seconds, 1), **self.counts}
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")


def fuzz(name: str, strategy: st.SearchStrategy, body: Callable[[Any], str], keep: Path) -> Tally:
    """Feed examples of ``strategy`` to ``body`` (which returns ``RESULT`` or ``ERROR``) for
    ``budget_seconds()``. Hypothesis has no time budget, so it runs in rounds sized from the
    measured rate; a failure is shrunk and reported by Hypothesis as usual, except a hang,
    whose input is pickled to ``keep / 'hang.pickle'`` (unshrunk)."""
    tally = Tally(name)
    start = time.monotonic()
    end = start + budget_seconds()

    def one(case: Any) -> None:
        try:
            kind = body(case)
        except Hang as err:
            (keep / "hang.pickle").write_bytes(pickle.dumps(case))
            raise Hang(f"{err} on {case!r} (kept in {keep / 'hang.pickle'})") from None
        tally.counts[kind] += 1

    while (left := end - time.monotonic()) > 0:
        spent = time.monotonic() - start
        rate = tally.inputs / spent if tally.inputs else 0.0
        n = max(1, min(2000, int(rate * left / 2))) if rate else 20  # halves: ends near the budget
        run = settings(
            max_examples=n,
            deadline=None,  # the hang check is check_contract's timer, not Hypothesis' deadline
            database=None,  # nothing written to the checkout (.hypothesis/)
            suppress_health_check=list(HealthCheck),
            phases=(Phase.generate, Phase.shrink),
            report_multiple_bugs=False,
            print_blob=True,  # the report ends with @reproduce_failure(...) to replay it
        )(given(strategy)(one))
        run()
    tally.seconds = time.monotonic() - start
    return tally


class Blob(bytes):
    """Bytes that print short: a failing example's report shows sizes and a prefix, not
    megabytes (``@reproduce_failure`` in Hypothesis' report replays the exact bytes)."""

    def __repr__(self) -> str:
        head = bytes(self[:64])
        return f"Blob({len(self)} bytes: {head!r}{'...' if len(self) > 64 else ''})"


# --- byte-level mutations, shared by every target (and drawable without Hypothesis) ---------

Mutation = tuple[str, int, bytes]  # (op, position or length, payload)
OPS = ("flip", "truncate", "insert", "delete", "overwrite", "int32")


def mutate(data: bytes, ops: Sequence[Mutation]) -> bytes:
    """Apply ``ops`` in order. Positions wrap around the current length, so any op fits."""
    b = bytearray(data)
    for op, pos, payload in ops:
        i = pos % (len(b) + 1)
        if op == "flip" and b:
            b[i % len(b)] ^= payload[0] if payload and payload[0] else 0xFF
        elif op == "truncate":
            del b[i:]
        elif op == "insert":
            b[i:i] = payload
        elif op == "delete":
            del b[i : i + 1 + len(payload) * 16]
        elif op == "overwrite":
            b[i : i + len(payload)] = payload
        elif op == "int32":  # a length, width or offset field turned into an extreme value
            b[i : i + 4] = payload[:4].ljust(4, b"\xff")
    return bytes(b)


def mutations(max_ops: int = 4) -> st.SearchStrategy[list[Mutation]]:
    op = st.tuples(st.sampled_from(OPS), st.integers(0, 1 << 20), st.binary(max_size=24))
    return st.lists(op, max_size=max_ops)


def random_mutations(rng: random.Random, n: int) -> list[Mutation]:
    """The same mutations from a seeded ``random.Random`` (for a fixed set of CLI inputs)."""
    return [
        (rng.choice(OPS), rng.randrange(1 << 20), rng.randbytes(rng.randrange(1, 24)))
        for _ in range(n)
    ]


def png_header(width: int, height: int, color_type: int = 2, idat: bytes = b"") -> bytes:
    """A PNG with a correct IHDR (CRCs included) claiming ``width`` x ``height``: a small file
    that asks the decoder for any amount of memory (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(idat))
        + chunk(b"IEND", b"")
    )

"""When a run writes a checkpoint in the middle of an epoch: on a signal, and on a clock.

A long CPU epoch (ResNet-18 on two cores: 15 minutes and more) must not be lost to a Ctrl-C or
to a cluster's preemption, which sends SIGTERM (or, with SLURM's ``--signal``, SIGUSR1) and
later SIGKILL. As PyTorch Lightning does, the signal handler only records the signal; the
trainer looks at it after each optimizer step, writes a checkpoint of that exact position and
stops (``cnnzoo.train.trainer``). Handlers run in the main thread between bytecodes, so
recording a number is all a handler needs to do, and never leaves the model half-updated.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

from cnnzoo.errors import Interrupted

# SIGINT: Ctrl-C; SIGTERM: kill, SLURM and Kubernetes preemption, torchrun stopping its workers;
# SIGUSR1: SLURM's ``--signal=USR1@SECONDS`` warning before the time limit (absent on Windows).
STOP_SIGNALS = tuple(
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, n)
)
ABORT_AT = 3  # the third signal aborts at once, even in the middle of the checkpoint save


class StopSignals:
    """A context that catches SIGINT, SIGTERM and SIGUSR1 while a run trains.

    The first signal asks the run to stop (``signum`` tells which); the second is only
    acknowledged (the save it may interrupt would otherwise be lost); the third raises
    ``Interrupted`` wherever the main thread is: an atomic save in progress removes its temp
    file, so the previous checkpoint is what remains. Outside the context (data loading, the
    final test) the previous handlers apply: Ctrl-C is a plain ``KeyboardInterrupt``.
    """

    def __init__(self, abort_message: str) -> None:
        self.abort_message = abort_message
        self.signum = 0  # the first signal received; 0: none
        self.count = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        # Python only lets the main thread install handlers; elsewhere (a run started from a
        # worker thread) the process's own handling stays, and no stop is ever requested.
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self.signum = signum
        elif self.count < ABORT_AT:
            # os.write, not print: the handler may run in the middle of a print to stderr
            os.write(2, b"stopping after this step's checkpoint; one more signal aborts it\n")
        else:
            raise Interrupted(signum, self.abort_message)


class CheckpointClock:
    """Says when ``minutes`` have passed since the last checkpoint (never when ``minutes`` is 0)."""

    def __init__(self, minutes: float) -> None:
        self.period = minutes * 60.0
        self.reset()

    def reset(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.period > 0 and time.monotonic() - self.last >= self.period

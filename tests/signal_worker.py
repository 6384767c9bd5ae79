"""``python tests/signal_worker.py HANDSHAKE EPOCH STEP SLOW ARGS`` = ``python -m cnnzoo ARGS``,
paused once at a known point so that tests/test_signals.py can signal it there.

Before it hands out training batch STEP (0-based: STEP steps of epoch EPOCH are done, their
timed checkpoints included) it creates ``HANDSHAKE/paused`` and waits for ``HANDSHAKE/go``.
After the pause every checkpoint save waits SLOW seconds between writing its temp file and
renaming it into place, so that a test can also signal in the middle of a save. The faults are
injected here, on the test side: the product has no hook for them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cnnzoo.cli import main
from cnnzoo.data.loader import TensorLoader

HANDSHAKE = Path(sys.argv[1])
EPOCH, STEP, SLOW = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
_paused = False
_batches, _replace = TensorLoader.batches, os.replace


def _pause() -> None:
    global _paused
    _paused = True
    (HANDSHAKE / "paused").touch()
    deadline = time.monotonic() + 120
    while not (HANDSHAKE / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # a signal that arrives here runs its handler at once


def _batches_with_pause(self, start=0):
    for i, batch in enumerate(_batches(self, start), start=start):
        if self.train and self.epoch == EPOCH and i == STEP and not _paused:
            _pause()
        yield batch


def _slow_replace(src, dst, *args, **kwargs):
    if _paused and str(dst).endswith(".pt"):  # the temp file is complete; its rename waits
        time.sleep(SLOW)
    return _replace(src, dst, *args, **kwargs)


TensorLoader.batches = _batches_with_pause
os.replace = _slow_replace  # cnnzoo.atomic renames through os.replace

if __name__ == "__main__":
    sys.exit(main(sys.argv[5:]))

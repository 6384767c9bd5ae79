"""``python tests/slow_save_worker.py SECONDS ARGS`` = ``python -m cnnzoo ARGS``, with every
checkpoint save slowed down between writing its temp file and renaming it into place, so that
tests/test_faults.py can SIGKILL a run in the middle of a save. The fault is injected here, on
the test side: the product has no hook for it.
"""

from __future__ import annotations

import os
import sys
import time

from cnnzoo.cli import main

DELAY = float(sys.argv[1])
_replace = os.replace


def _slow_replace(src, dst, *args, **kwargs):
    if str(dst).endswith(".pt"):  # a checkpoint's temp file is complete; its rename waits
        time.sleep(DELAY)
    return _replace(src, dst, *args, **kwargs)


os.replace = _slow_replace  # cnnzoo.atomic renames through os.replace

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:]))

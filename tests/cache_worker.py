"""``python tests/cache_worker.py ARCHIVE READY GO``: load CIFAR-10 from ARCHIVE the way a run
starts, for tests/test_cache.py's concurrent first starts. The worker touches READY, waits for
GO (so that two workers start loading together), and each decode is slowed by half a second,
so the second worker surely arrives while the first is still building the cache. It prints
``decoding`` when it decodes the archive and, at the end, one digest of the dataset's tensors.
The delay is injected here, on the test side: the product has no hook for it.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import cnnzoo.data.cifar as cifar

_decode = cifar._decode


def _slow_decode(*args, **kwargs):
    print("decoding", flush=True)
    time.sleep(0.5)
    return _decode(*args, **kwargs)


def digest(ds) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        h.update(t.contiguous().numpy().tobytes())
    h.update("|".join(ds.classes).encode())
    return h.hexdigest()


if __name__ == "__main__":
    archive, ready, go = (Path(a) for a in sys.argv[1:4])
    cifar._decode = _slow_decode
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    ds = cifar.load_dataset("cifar10", archive, quiet=True)
    print(digest(ds), flush=True)

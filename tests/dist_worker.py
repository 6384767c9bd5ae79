"""``python tests/dist_worker.py ARGS`` = ``python -m cnnzoo ARGS``, with a fault injected.

Started by torchrun in tests/test_distributed.py. ``CNNZOO_TEST_FAULT=die`` makes rank
``CNNZOO_TEST_FAULT_RANK`` (default 1) exit abruptly after the first training batch of epoch
``CNNZOO_TEST_FAULT_EPOCH`` (default: the first epoch it trains), as a crashed or OOM-killed
worker would; ``hang`` makes it stop responding there instead (the other ranks then
wait in a collective until ``$CNNZOO_DIST_TIMEOUT`` ends it); ``diverge`` makes that rank's
loss read as huge (its gradients unchanged), as a rank that alone sees the loss explode;
``sigterm`` makes that rank alone receive SIGTERM there, as a preempted worker (it trains on).
Without the variable it adds nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from cnnzoo.cli import main
from cnnzoo.train import trainer

FAULT = os.environ.get("CNNZOO_TEST_FAULT")
FAULT_RANK = int(os.environ.get("CNNZOO_TEST_FAULT_RANK", "1"))
FAULT_EPOCH = int(os.environ.get("CNNZOO_TEST_FAULT_EPOCH", "1"))
_epochs_seen = 0


def _faulty(batches):
    for i, batch in enumerate(batches):
        if i == 1 and FAULT == "sigterm":  # one step done: this rank alone is told to stop
            os.kill(os.getpid(), signal.SIGTERM)
        elif i == 1:  # one step done: the faulty rank goes away mid-epoch
            if FAULT == "die":
                os._exit(3)
            while True:  # "hang": alive but silent
                time.sleep(60)
        yield batch


if FAULT and int(os.environ.get("RANK", "0")) == FAULT_RANK:
    _train_epoch = trainer.train_epoch

    def train_epoch(net, batches, *args, **kwargs):
        global _epochs_seen
        _epochs_seen += 1
        if _epochs_seen == FAULT_EPOCH and FAULT == "diverge":
            criterion = args[1]  # after (net, batches): optimizer, criterion, amp, ...

            def huge(out, y):  # the value × 1e6, the gradient as it was
                loss = criterion(out, y)
                return loss + 1e6 * loss.detach()

            args = (args[0], huge, *args[2:])
        elif _epochs_seen == FAULT_EPOCH:
            batches = _faulty(batches)
        return _train_epoch(net, batches, *args, **kwargs)

    trainer.train_epoch = train_epoch

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Progress output: a bar on a terminal or in Jupyter, plain log lines otherwise (a pipe, a log
file), nothing with --quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

REDRAW_S = 0.5  # the bar's statistics are read (a device sync) at most this often


class Progress:
    def __init__(self, total_epochs: int, quiet: bool = False, enabled: bool = True) -> None:
        self.total_epochs = total_epochs
        self.quiet = quiet or not enabled
        # a notebook's stdout is no terminal, yet shows a bar: tqdm.auto draws it (a widget)
        self.tty = sys.stdout.isatty() or in_notebook()
        self.bar = None
        self._t0 = self._drawn = 0.0
        self._walls: list[float] = []  # wall seconds of the epochs of this invocation
        self._remaining_after = ""  # " | run ends in ..." once an epoch has been timed

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """An epoch of ``steps`` begins, ``done`` of them already (a resume mid-epoch)."""
        self._t0 = self._drawn = time.perf_counter()
        if self.quiet or not self.tty:
            return
        from tqdm.auto import tqdm  # the terminal's tqdm outside Jupyter

        self.bar = tqdm(
            total=steps,
            initial=done,
            desc=f"epoch {epoch}/{self.total_epochs}{self._remaining_after}",
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
            mininterval=REDRAW_S,
        )

    def batch(self, stats: Callable[[], tuple[float, float, int]]) -> None:
        """After every step; ``stats()`` (mean loss, accuracy, images so far) waits for the
        device, so it is read only when the bar redraws, at most every ``REDRAW_S`` seconds."""
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._drawn < REDRAW_S:
            return
        self._drawn = now
        loss, acc, images = stats()
        rate = images / max(now - self._t0, 1e-9)
        self.bar.set_postfix_str(f"loss {loss:.3f} acc {acc:.3f} {rate:.0f} img/s")

    def end_epoch(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        val = (
            f" val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}"
            if row.get("val_acc") is not None
            else ""
        )
        self._walls.append(time.perf_counter() - self._t0)
        self._remaining_after = run_eta(self._walls, self.total_epochs - row["epoch"])
        self.log(
            f"epoch {row['epoch']}/{self.total_epochs} lr {row['lr']:.4g} "
            f"train_loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f}{val} "
            f"{row['seconds']:.1f}s {row['img_per_s']:.0f} img/s{self._remaining_after}"
        )

    @property
    def wants_batches(self) -> bool:
        return self.bar is not None


def in_notebook() -> bool:
    """Running in a Jupyter kernel (the test ``tqdm.auto`` makes to pick its notebook bar)."""
    ipython = sys.modules.get("IPython")  # never imported here: only a kernel has loaded it
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def run_eta(walls: list[float], epochs_left: int, now: float | None = None) -> str:
    """`` | run ends in 1h05m (~14:32)``: the epochs left at the mean wall time of the epochs
    timed so far (training, evaluation and saving); empty when nothing is left."""
    if not walls or epochs_left <= 0:
        return ""
    left = sum(walls) / len(walls) * epochs_left
    hours, minutes = divmod(round(left / 60), 60)
    span = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m" if minutes else f"{left:.0f}s"
    clock = time.strftime("%H:%M", time.localtime((now or time.time()) + left))
    return f" | run ends in {span} (~{clock})"

"""Progress output: a bar on a terminal, plain log lines otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_epochs: int, quiet: bool = False, enabled: bool = True) -> None:
        self.total_epochs = total_epochs
        self.quiet = quiet or not enabled
        self.tty = sys.stdout.isatty()
        self.bar = None
        self._t0 = 0.0

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._t0 = time.perf_counter()
        if self.quiet or not self.tty:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=steps,
            desc=f"epoch {epoch}/{self.total_epochs}",
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
        )

    def batch(self, loss: float, acc: float, images: int) -> None:
        """Called with running averages; the bar's own rate gives the ETA."""
        if self.bar is None:
            return
        rate = images / max(time.perf_counter() - self._t0, 1e-9)
        self.bar.set_postfix_str(f"loss {loss:.3f} acc {acc:.3f} {rate:.0f} img/s", refresh=False)
        self.bar.update(1)

    def end_epoch(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        val = (
            f" val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}"
            if row.get("val_acc") is not None
            else ""
        )
        self.log(
            f"epoch {row['epoch']}/{self.total_epochs} lr {row['lr']:.4g} "
            f"train_loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f}{val} "
            f"{row['seconds']:.1f}s {row['img_per_s']:.0f} img/s"
        )

    @property
    def wants_batches(self) -> bool:
        return self.bar is not None

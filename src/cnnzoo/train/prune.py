"""Loss-based data pruning with rescaled gradients (InfoBatch, Qin et al., ICLR 2024).

Each training image keeps the loss it had the last time it was trained on (free: the training
forward pass computes it). In a pruned epoch the ``pool`` share of images with the lowest such
loss is the candidate pool; a random ``rate`` of the pool is skipped for the epoch, and the rest
of the pool has its loss weighted by 1/(1 - rate), so that the epoch's expected gradient is the
full data's. The first epoch (no losses yet) and the last ``full_last`` epochs see every image
(InfoBatch's annealing). A pruned epoch costs about 1 - pool·rate of a full one; the count
skipped is fixed, so every pruned epoch has the same number of steps and the schedule's length
is known up front.

Exact resume: the epoch's choice is made from a snapshot of the losses taken when the epoch
starts; the checkpoint holds the snapshot beside the current losses, so a run resumed in the
middle of an epoch trains on the same images with the same weights. Under torchrun each rank
records the losses of its own shard; ``sync`` merges them (before every checkpoint and at every
epoch's end), so every rank makes the same choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnzoo.data.loader import TensorLoader
from cnnzoo.errors import UserError
from cnnzoo.train.config import TrainConfig
from cnnzoo.train.runtime import DistInfo, all_reduce_sum


@dataclass(frozen=True)
class PrunePlan:
    """Which epochs skip how many of ``n`` training images."""

    n: int  # training images
    rate: float  # share of the pool skipped in a pruned epoch
    pool: float  # share of the images (lowest recorded loss) that may be skipped
    epochs: int
    full_last: int  # the last N epochs see every image

    @property
    def pool_size(self) -> int:
        return round(self.pool * self.n)

    @property
    def dropped(self) -> int:
        """Images skipped in a pruned epoch: at least one of the pool is kept (its weight
        stands in for the rest)."""
        return max(0, min(round(self.rate * self.pool_size), self.pool_size - 1))

    def pruned(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` skips images."""
        return self.dropped > 0 and 1 < epoch <= self.epochs - self.full_last

    def size(self, epoch: int) -> int:
        """Images 1-based ``epoch`` trains on."""
        return self.n - self.dropped if self.pruned(epoch) else self.n

    def sizes(self) -> list[int]:
        """Images each epoch of the run trains on, epoch 1 first."""
        return [self.size(epoch) for epoch in range(1, self.epochs + 1)]


class LossPruner:
    """Per-image losses, and each epoch's choice of images and loss weights from them. The
    tensors live on the training device, so recording a batch's losses needs no host sync."""

    def __init__(self, plan: PrunePlan, seed: int, device: torch.device | str = "cpu") -> None:
        self.plan, self.seed, self.device = plan, seed, torch.device(device)
        n = plan.n
        self.losses = torch.zeros(n, device=self.device)  # (N,) each image's latest loss
        self.seen = torch.zeros(n, dtype=torch.bool, device=self.device)  # since the last sync
        self.snapshot = torch.zeros(n, device=self.device)  # (N,) what this epoch chose from
        self.snapshot_epoch = 0  # the epoch ``snapshot`` was taken for (0: none yet)
        self.weights = torch.ones(n, device=self.device)  # (N,) this epoch's loss weights

    def start_epoch(self, epoch: int) -> Tensor | None:
        """The images ``epoch`` trains on (sorted indices, on the CPU; None: all of them), and
        ``weights`` set for it. A run resumed in the middle of ``epoch`` chooses from the saved
        snapshot."""
        if self.snapshot_epoch != epoch:
            self.snapshot, self.snapshot_epoch = self.losses.clone(), epoch
        self.weights = torch.ones(self.plan.n, device=self.device)
        if not self.plan.pruned(epoch):
            return None
        size = self.plan.pool_size
        pool = self.snapshot.topk(size, largest=False).indices  # (pool,) the lowest losses
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 104729)
        drop = pool[torch.randperm(size, generator=g)[: self.plan.dropped].to(self.device)]
        self.weights[pool] = size / (size - self.plan.dropped)  # the kept rest stands in
        keep = torch.ones(self.plan.n, dtype=torch.bool, device=self.device)
        keep[drop] = False
        return keep.nonzero().squeeze(1).cpu()

    def record(self, index: Tensor, losses: Tensor) -> None:
        """The latest losses (B,) of images ``index`` (B,)."""
        index = index.to(self.device)
        self.losses[index] = losses.detach().float().to(self.device)
        self.seen[index] = True

    def sync(self, dist: DistInfo) -> None:
        """Merge the ranks' records: each image takes the loss its rank recorded (the mean, for
        the few images the padding of an uneven split gave to two ranks)."""
        if not dist.enabled:
            self.seen.zero_()
            return
        both = torch.stack([torch.where(self.seen, self.losses, 0.0), self.seen.float()])
        both = all_reduce_sum(both, dist)  # (2, N): loss sums, counts
        self.losses = torch.where(both[1] > 0, both[0] / both[1].clamp(min=1), self.losses)
        self.seen.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": self.losses.cpu().clone(),
            "snapshot": self.snapshot.cpu().clone(),
            "snapshot_epoch": self.snapshot_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = state["losses"].to(self.device).clone()
        self.snapshot = state["snapshot"].to(self.device).clone()
        self.snapshot_epoch = int(state["snapshot_epoch"])


class PrunedLoss(nn.Module):
    """Cross-entropy per image (B,), recorded for the pruner and weighted by its epoch weights,
    then averaged: the training criterion while pruning. The batch's image indices come from
    the loader (``last_index``), so each call must follow the loader's yield of that batch."""

    def __init__(self, pruner: LossPruner, loader: TensorLoader, label_smoothing: float) -> None:
        super().__init__()
        self.pruner, self.loader, self.label_smoothing = pruner, loader, label_smoothing

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        losses = F.cross_entropy(
            logits.float(), y, reduction="none", label_smoothing=self.label_smoothing
        )  # (B,)
        index = self.loader.last_index
        if index is None or index.shape[0] != losses.shape[0]:
            raise RuntimeError("PrunedLoss needs the whole batch the loader yielded last")
        index = index.to(self.pruner.device)  # the loader's device: no copy in a run
        self.pruner.record(index, losses)
        return (losses * self.pruner.weights[index].to(losses.device)).mean()


def build_pruner(cfg: TrainConfig, loader: TensorLoader) -> LossPruner | None:
    """``--prune``'s pruner over the loader's training images, or None when it is off."""
    if not cfg.prune:
        return None
    plan = PrunePlan(loader.x.shape[0], cfg.prune, cfg.prune_pool, cfg.epochs, cfg.prune_full_last)
    smallest = min(plan.sizes())
    if loader.steps(smallest) < 1:  # only a pruned epoch can be this small
        raise UserError(
            f"--prune {cfg.prune} leaves {smallest} of {plan.n} training images, "
            f"fewer than a batch of {cfg.batch_size}"
        )
    return LossPruner(plan, cfg.seed, loader.device)

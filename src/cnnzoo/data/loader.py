"""A loader over uint8 tensors in memory with augmentation as batched tensor ops.

No per-image Python: an epoch's random choices (order, crop offsets, flips, cutout centres) are
drawn up front from a generator seeded by (seed, epoch), and each batch's mixing from one seeded
by (seed, epoch, rank, batch), so an epoch is the same whether it runs in one go, after a resume
(also one from the middle of the epoch: ``batches(start)``), or split over several ranks (each
rank takes a strided shard of the same permutation, as ``DistributedSampler`` does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnzoo.data.mix import Mix, mix_batch, mix_rng


@dataclass(frozen=True)
class Augment:
    """Random crop with ``pad`` padding (zeros, or by reflection with ``reflect``) + horizontal
    flip (+ optional cutout), and optionally low-resolution early epochs.

    ``alternate_flip`` (airbench, Jordan 2024): each image is flipped at random in epoch 0 and
    then flipped in every other epoch relative to that, so consecutive epochs always show both
    orientations of every image, where random flips repeat the same view in half the cases.

    ``low_res`` (progressive resizing, as fast.ai's DAWNBench runs): the early epochs see each
    augmented batch downsampled to ``low_res``×``low_res``, so a step costs about the pixel
    ratio (24/32: ~0.56) and the last epochs, at full size, adapt the net to the test images.
    """

    pad: int = 4
    flip: bool = True
    cutout: int = 0  # side of the square zeroed at a random centre; 0 = off
    alternate_flip: bool = False
    reflect: bool = False  # pad crops by reflection (airbench94), not with zeros
    low_res: int = 0  # side the batches of the first ``low_res_epochs`` epochs are resized to
    low_res_epochs: int = 0  # epochs 1..N (the trainer counts from 1) at ``low_res``; 0 = off


def normalize(
    x: Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = True
) -> Tensor:
    """uint8 NHWC (N,H,W,3) -> float32 NCHW normalised; channels_last keeps NHWC memory order."""
    m = torch.tensor(mean, device=x.device)
    s = torch.tensor(std, device=x.device)
    out = (x.float() * (1.0 / 255.0) - m) / s  # broadcast over the last (channel) dim
    out = out.permute(0, 3, 1, 2)  # a channels_last-strided NCHW view
    return out if channels_last else out.contiguous()


def downsample(x: Tensor, side: int, channels_last: bool = True) -> Tensor:
    """float (B,C,H,W) -> (B,C,side,side), bilinear with antialiasing (an area-like average
    that does not alias the fine texture a plain bilinear sampling would)."""
    out = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out.contiguous()


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _reflect(i: Tensor, n: int) -> Tensor:
    """Indices outside [0, n) mirrored back in, as ``F.pad(mode="reflect")`` does (pad < n)."""
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def augment_batch(
    x: Tensor, dx: Tensor, dy: Tensor, flip: Tensor, cut: Tensor | None, aug: Augment
) -> Tensor:
    """x: uint8 (B,H,W,C); dx, dy in [0, 2·pad]; flip bool (B,); cut (B,2) centres or None."""
    b, h, w, _ = x.shape
    if aug.pad and aug.reflect:
        # crop positions in the unpadded image, -p..H+p-1, reflected back inside (no edge repeat)
        rows = _reflect(dy[:, None] - aug.pad + torch.arange(h, device=x.device), h)[:, :, None]
        cols = _reflect(dx[:, None] - aug.pad + torch.arange(w, device=x.device), w)[:, None, :]
        x = x[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (B, H, W, C)
    elif aug.pad:
        padded = F.pad(x, (0, 0, aug.pad, aug.pad, aug.pad, aug.pad))  # (B, H+2p, W+2p, C)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        x = padded[torch.arange(b, device=x.device)[:, None, None], rows, cols]  # (B, H, W, C)
    if aug.flip:
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
    if aug.cutout and cut is not None:
        r = torch.arange(h, device=x.device)
        c = torch.arange(w, device=x.device)
        top_left = cut - aug.cutout // 2  # (B, 2): the square is [c - s//2, c - s//2 + s)
        in_r = (r[None, :] >= top_left[:, :1]) & (r[None, :] < top_left[:, :1] + aug.cutout)
        in_c = (c[None, :] >= top_left[:, 1:]) & (c[None, :] < top_left[:, 1:] + aug.cutout)
        hole = in_r[:, :, None] & in_c[:, None, :]
        x = x.masked_fill(hole[..., None], 0)
    return x


class TensorLoader:
    """Iterate (images, labels) batches over uint8 NHWC tensors.

    ``batch_size`` is per rank. With ``world_size > 1`` each rank sees a disjoint shard of the
    epoch's permutation: padded to a multiple of the world size for training (as
    ``DistributedSampler``), unpadded for evaluation so every item is counted exactly once.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        train: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
        mix: Mix | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size, self.mean, self.std = batch_size, mean, std
        self.train, self.augment, self.seed = train, augment, seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.mix = mix if mix is not None and mix.enabled and train else None
        self.epoch = 0
        self.subset: Tensor | None = None  # training: this epoch's images (indices into x)
        self.last_index: Tensor | None = None  # the image indices of the batch yielded last

    def set_epoch(self, epoch: int, subset: Tensor | None = None) -> None:
        """Epoch ``epoch``'s order and draws; training on the images ``subset`` (sorted indices
        into x, as data pruning chooses them) or, by default, on all."""
        self.epoch, self.subset = epoch, subset

    def _indices(self) -> Tensor:
        n = self.x.shape[0]
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        n = self._images()
        perm = torch.randperm(n, generator=_epoch_generator(self.seed, self.epoch))
        if self.subset is not None:
            perm = self.subset[perm]
        perm = torch.cat(
            [perm, perm[: self._padded_total() - n]]
        )  # pad so every rank gets the same count
        return perm[self.rank :: self.world_size]

    def _images(self) -> int:
        return self.subset.numel() if self.subset is not None and self.train else self.x.shape[0]

    def _padded_total(self, images: int | None = None) -> int:
        n = self._images() if images is None else images
        return -(-n // self.world_size) * self.world_size

    def steps(self, images: int) -> int:
        """Training batches per rank in an epoch over ``images`` images: the last partial batch
        is dropped (a batch of 1 breaks BatchNorm)."""
        return (self._padded_total(images) // self.world_size) // self.batch_size

    def __len__(self) -> int:
        if self.train:
            return self.steps(self._images())
        return -(-len(range(self.rank, self.x.shape[0], self.world_size)) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches from batch ``start`` on: exactly those an iteration from the
        start yields after its first ``start`` batches (a run resumed in the middle of an
        epoch), without building the skipped ones. Every random choice is either drawn for the
        whole epoch up front (order, crops, flips, cutout) or per batch (mixing)."""
        idx = self._indices()
        aug = self.augment if self.train else None
        if aug:
            # this rank's positions within the padded epoch permutation, and their draws
            pos = torch.arange(self.rank, self._padded_total(), self.world_size)
            params = [p[pos] if p is not None else None for p in self._draw_aug(aug)]
            if aug.alternate_flip:
                params[2] = self._alternating_flips()[idx]
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            bi = idx[sl].to(self.device)
            self.last_index = bi
            xb = self.x[bi]
            if aug:
                dx, dy, fl, cut = (p[sl].to(self.device) if p is not None else None for p in params)
                xb = augment_batch(xb, dx, dy, fl, cut, aug)
            xb, yb = normalize(xb, self.mean, self.std, self.channels_last), self.y[bi]
            if aug and aug.low_res and self.epoch <= aug.low_res_epochs:
                xb = downsample(xb, aug.low_res, self.channels_last)
            if self.mix is not None:  # one generator per (seed, epoch, rank, batch)
                xb, yb = mix_batch(xb, yb, self.mix, mix_rng(self.seed, self.epoch, self.rank, i))
            yield xb, yb

    def _alternating_flips(self) -> Tensor:
        """Per training image (not per position): a fixed random orientation, inverted in odd
        epochs. (N,) bool."""
        g = _epoch_generator(self.seed + 7927, 0)  # one draw for the whole run
        first = torch.rand(self.x.shape[0], generator=g) < 0.5
        return first ^ bool(self.epoch % 2)

    def _draw_aug(self, aug: Augment) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Random crop offsets, flips and cutout centres for every position of the epoch."""
        total = self._padded_total()
        g = _epoch_generator(self.seed + 7919, self.epoch)  # a stream apart from the order's
        dx = torch.randint(0, 2 * aug.pad + 1, (total,), generator=g)
        dy = torch.randint(0, 2 * aug.pad + 1, (total,), generator=g)
        flip = torch.rand(total, generator=g) < 0.5
        h, w = self.x.shape[1:3]
        cut = None
        if aug.cutout:
            cut = torch.stack(
                [
                    torch.randint(0, h, (total,), generator=g),
                    torch.randint(0, w, (total,), generator=g),
                ],
                dim=1,
            )
        return dx, dy, flip, cut

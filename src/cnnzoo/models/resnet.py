"""Residual networks (He et al. 2015, "Deep Residual Learning for Image Recognition") and their
plain twins, from one code path: ``skip=False`` removes the shortcut and nothing else.

Two families share the code:
- ImageNet depths 18/34/50/101/152 with the CIFAR stem used by the reference notebook: a 3×3
  stride-1 conv (64 channels) instead of the paper's 7×7 stride-2 conv + 3×3 max-pool, since a
  32×32 image would otherwise shrink to 8×8 before the first block. Stages 64/128/256/512,
  strides 1,2,2,2; projection shortcuts (option B) where the shape changes.
- The paper's CIFAR family (§4.2): depth 6n+2, three stages of n BasicBlocks with 16/32/64
  channels on 32/16/8 maps, identity shortcuts with zero-padded channels (option A) by default.

Shapes for resnet18 on (N,3,32,32): stem (N,64,32,32) → layer1 (N,64,32,32) → layer2
(N,128,16,16) → layer3 (N,256,8,8) → layer4 (N,512,4,4) → pool (N,512) → fc (N,classes).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from cnnzoo.models._init import init_weights
from cnnzoo.models.registry import register_model

Shortcut = Literal["A", "B"]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A (He et al. §3.3): subsample by ``stride`` and zero-pad the new channels.

    Parameter-free, so a CIFAR ResNet has exactly the parameters of its plain twin.
    (N, C, H, W) -> (N, out_ch, H/stride, W/stride).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # pad the channel dim at the end


def make_shortcut(in_ch: int, out_ch: int, stride: int, kind: Shortcut) -> nn.Module | None:
    """Identity (None) when the shape is kept; else option A (pad) or option B (1×1 conv + BN)."""
    if stride == 1 and in_ch == out_ch:
        return None
    if kind == "A":
        return PadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """3×3 → 3×3, two weight layers; output ReLU(F(x) + shortcut(x)), or ReLU(F(x)) if plain."""

    expansion = 1

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, skip: bool = True, shortcut: Shortcut = "B"
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = conv3x3(in_ch, width, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, out_ch), nn.BatchNorm2d(out_ch)
        self.skip = skip
        self.shortcut = make_shortcut(in_ch, out_ch, stride, shortcut) if skip else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 → 1×1 expand (×4). Stride sits on the 3×3 as in torchvision's
    "ResNet v1.5" (the paper strides the first 1×1); this matches the reference notebook."""

    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int = 1, skip: bool = True, shortcut: Shortcut = "B"
    ) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = conv1x1(in_ch, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, out_ch), nn.BatchNorm2d(out_ch)
        self.skip = skip
        self.shortcut = make_shortcut(in_ch, out_ch, stride, shortcut) if skip else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.skip:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)


class ResNet(nn.Module):
    """Stem (3×3 conv + BN + ReLU) → stages of blocks → global average pool → linear."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int = 10,
        skip: bool = True,
        shortcut: Shortcut = "B",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if zero_init_residual and not skip:
            # without the shortcut a zeroed last BN makes every block output ReLU(0) = 0: a
            # constant network that no gradient reaches
            raise ValueError(
                "zero_init_residual needs skip connections; a plain net has no residual branch"
            )
        self.skip, self.shortcut_kind = skip, shortcut
        self.in_ch = widths[0]
        self.stem = nn.Sequential(
            conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages = []
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stages.append(self._make_layer(block, width, n, stride=1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        init_weights(self)
        if zero_init_residual:  # Goyal et al. 2017: each residual branch starts as zero
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], width: int, n: int, stride: int
    ) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):  # only the first block of a stage downsamples
            blocks.append(block(self.in_ch, width, s, self.skip, self.shortcut_kind))
            self.in_ch = width * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


# ---- ImageNet depths with the CIFAR stem ------------------------------------------------------

_IMAGENET = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_IMAGENET_WIDTHS = (64, 128, 256, 512)
_PAPER = "He et al. 2015"


def _register_imagenet(depth: int, skip: bool) -> None:
    block, layers = _IMAGENET[depth]
    name = f"{'resnet' if skip else 'plain'}{depth}"

    def build(*, num_classes: int = 10, zero_init_residual: bool = False) -> ResNet:
        return ResNet(
            block,
            layers,
            _IMAGENET_WIDTHS,
            num_classes,
            skip=skip,
            shortcut="B",
            zero_init_residual=zero_init_residual,
        )

    build.__name__ = build.__qualname__ = name
    kind = "bottleneck" if block is Bottleneck else "basic"
    feature = f"residual {kind} blocks" if skip else f"{kind} blocks, no skip (plain twin)"
    register_model(
        name,
        family="resnet" if skip else "plain",
        paper=_PAPER,
        year=2015,
        key_feature=feature,
        depth=depth,
    )(build)


for _depth in _IMAGENET:
    _register_imagenet(_depth, skip=True)
for _depth in (18, 34):
    _register_imagenet(_depth, skip=False)


# ---- The paper's CIFAR family (§4.2): 6n+2 layers ----------------------------------------------

_CIFAR_DEPTHS = (20, 32, 44, 56, 110)


def _register_cifar(depth: int, skip: bool) -> None:
    n = (depth - 2) // 6
    name = f"{'resnet' if skip else 'plain'}{depth}"

    def build(
        *, num_classes: int = 10, shortcut: Shortcut = "A", zero_init_residual: bool = False
    ) -> ResNet:
        return ResNet(
            BasicBlock,
            (n, n, n),
            (16, 32, 64),
            num_classes,
            skip=skip,
            shortcut=shortcut,
            zero_init_residual=zero_init_residual,
        )

    build.__name__ = build.__qualname__ = name
    feature = "CIFAR ResNet, identity (option A) shortcuts" if skip else "CIFAR plain net, no skip"
    register_model(
        name,
        family="resnet-cifar" if skip else "plain-cifar",
        paper=_PAPER,
        year=2015,
        key_feature=feature,
        depth=depth,
    )(build)


for _depth in _CIFAR_DEPTHS:
    _register_cifar(_depth, skip=True)
    _register_cifar(_depth, skip=False)

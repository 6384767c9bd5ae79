"""The Inception module and a GoogLeNet-style network (Szegedy et al. 2014, "Going Deeper with
Convolutions").

CIFAR variant, departing from the paper:
- BatchNorm after every conv (GoogLeNet v1 had none; BN came with Inception v2), so convs carry
  no bias;
- stem: one 3×3 conv to 192 channels on the 32×32 image, instead of the paper's
  7×7/2 conv, max-pool, LRN, 1×1 and 3×3 convs and another max-pool, which would leave a 2×2
  map after stage 4;
- no auxiliary classifiers: ``forward`` always returns the logits tensor;
- 3×3/2 max-pools after 3b and 4e as in the paper: spatial sizes 32 → 16 → 8.

Table 1 widths for the nine modules are kept exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnzoo.models._init import init_weights
from cnnzoo.models.registry import register_model


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels:
    1×1 | 1×1→3×3 | 1×1→5×5 | 3×3 max-pool→1×1.

    (N, in_ch, H, W) -> (N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W).
    """

    def __init__(
        self,
        in_ch: int,
        ch1x1: int,
        ch3x3_reduce: int,
        ch3x3: int,
        ch5x5_reduce: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = conv_bn_relu(in_ch, ch1x1, 1)
        self.branch2 = nn.Sequential(
            conv_bn_relu(in_ch, ch3x3_reduce, 1), conv_bn_relu(ch3x3_reduce, ch3x3, 3)
        )
        self.branch3 = nn.Sequential(
            conv_bn_relu(in_ch, ch5x5_reduce, 1), conv_bn_relu(ch5x5_reduce, ch5x5, 5)
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(in_ch, pool_proj, 1)
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], dim=1)


# Table 1 of the paper: (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj)
TABLE1: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
_POOL_AFTER = {"3b", "4e"}


class GoogLeNet(nn.Module):
    """Stem → 3a,3b → pool → 4a..4e → pool → 5a,5b → global avg pool → dropout 0.4 → linear."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.4) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 192, 3)  # (N,3,32,32) -> (N,192,32,32)
        layers: list[nn.Module] = []
        in_ch = 192
        for name, widths in TABLE1.items():
            module = InceptionModule(in_ch, *widths)
            layers.append(module)
            in_ch = module.out_channels
            if name in _POOL_AFTER:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.inception = nn.Sequential(*layers)  # -> (N,1024,8,8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.inception(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


@register_model(
    "googlenet",
    family="inception",
    paper="Szegedy et al. 2014",
    year=2014,
    key_feature="inception modules: parallel 1x1/3x3/5x5/pool branches",
    depth=22,
)
def googlenet(*, num_classes: int = 10, dropout: float = 0.4) -> GoogLeNet:
    """GoogLeNet-style CIFAR network: 9 inception modules with Table 1 widths."""
    return GoogLeNet(num_classes=num_classes, dropout=dropout)

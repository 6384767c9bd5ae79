"""VGG (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for Large-Scale Image
Recognition"), configurations A, B, D and E as VGG-11/13/16/19.

CIFAR variant, departing from the paper as the reference notebook does:
- BatchNorm after every conv (the paper predates BN; without it the deep configs need the
  paper's staged initialisation to train);
- 32×32 inputs: after five 2×2 max-pools the feature map is 1×1×512, so the classifier is
  512→4096→4096→classes instead of 7·7·512→4096→4096→1000.
"""

from __future__ import annotations

from torch import Tensor, nn

from cnnzoo.models._init import init_weights
from cnnzoo.models.registry import register_model

# Number of 3×3 convs per block; widths are 64, 128, 256, 512, 512 for every configuration.
WIDTHS = (64, 128, 256, 512, 512)
CONFIGS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),  # A
    13: (2, 2, 2, 2, 2),  # B
    16: (2, 2, 3, 3, 3),  # D
    19: (2, 2, 4, 4, 4),  # E
}


class VGG(nn.Module):
    """Stacks of 3×3 conv + BN + ReLU, each block ending in a 2×2 max-pool; then 3 FC layers."""

    def __init__(
        self, convs_per_block: tuple[int, ...], num_classes: int = 10, dropout: float = 0.5
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for width, n in zip(WIDTHS, convs_per_block, strict=True):
            for _ in range(n):
                # bias=True as in the paper and the notebook (redundant before BN, kept so the
                # parameter count matches the reference: 33,646,666 for VGG-16).
                layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width)]
                layers.append(nn.ReLU(inplace=True))
                in_ch = width
            layers.append(nn.MaxPool2d(2, 2))  # 32→16→8→4→2→1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, 512, 1, 1) -> (N, 512)
            nn.Linear(512, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _register(depth: int, letter: str) -> None:
    def build(*, num_classes: int = 10, dropout: float = 0.5) -> VGG:
        return VGG(CONFIGS[depth], num_classes=num_classes, dropout=dropout)

    build.__name__ = build.__qualname__ = f"vgg{depth}"
    build.__doc__ = f"VGG-{depth} (configuration {letter}), CIFAR variant with BN."
    register_model(
        f"vgg{depth}",
        family="vgg",
        paper="Simonyan & Zisserman 2014",
        year=2014,
        key_feature=f"stacked 3x3 convs (config {letter}), BN",
        depth=depth,
    )(build)


for _depth, _letter in ((11, "A"), (13, "B"), (16, "D"), (19, "E")):
    _register(_depth, _letter)

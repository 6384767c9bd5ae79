"""A small generated dataset with learnable structure, for tests and demos anywhere."""

from __future__ import annotations

import torch

from cnnzoo.data.dataset import Dataset

DEFAULT_TRAIN_IMAGES = 2000  # what --data synthetic gives; synthetic:N asks for N


def make_synthetic(
    n_train: int = DEFAULT_TRAIN_IMAGES, n_test: int = 500, num_classes: int = 10, seed: int = 0
) -> Dataset:
    """Each class is a smooth random colour pattern; images are that pattern, randomly shifted
    by up to 4 pixels, mixed with noise. A small CNN separates the classes in an epoch or two,
    yet no single pixel gives the label away.
    """
    g = torch.Generator().manual_seed(seed)
    # (C, 3, 8, 8) random colours, upsampled to smooth 40×40 patterns
    base = torch.rand(num_classes, 3, 8, 8, generator=g)
    patterns = torch.nn.functional.interpolate(base, size=40, mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        dx, dy = (torch.randint(0, 9, (n,), generator=g) for _ in range(2))
        rows = dy[:, None] + torch.arange(32)  # (n, 32)
        cols = dx[:, None] + torch.arange(32)
        img = patterns[y]  # (n, 3, 40, 40)
        n_idx, c_idx = torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None]
        crops = img[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]  # (n,3,32,32)
        noise = torch.rand(n, 3, 32, 32, generator=g)
        x = (0.6 * crops + 0.4 * noise).mul(255).round().clamp(0, 255).to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous(), y  # NHWC uint8, like CIFAR

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return Dataset(
        name="synthetic",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=[f"class{i}" for i in range(num_classes)],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        source=f"synthetic:{n_train} (generated, seed {seed})",
    )

"""Test-wide settings: no network, no writes to the user's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_CIFAR10 = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar-10-python.tar.gz"


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cnnzoo-home")
    mp.setenv("CNNZOO_CACHE", str(root / "cache"))
    mp.setenv("CNNZOO_DATA", str(root / "data"))
    mp.setenv("CNNZOO_OFFLINE", "1")  # a test that reaches for the network fails loudly
    yield
    mp.undo()

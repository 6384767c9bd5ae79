"""The benchmark scripts run and print what their docs promise (tiny sizes, no timing asserts)."""

from __future__ import annotations

import importlib.util

import pytest

from helpers import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_throughput_precisions_prints_auto_against_both(capsys: pytest.CaptureFixture) -> None:
    argv = ["--data", "synthetic:64", "--models", "resnet20", "--batch-size", "16"]
    _load("throughput").main([*argv, "--steps", "1", "--warmup", "1", "--precisions"])
    out = capsys.readouterr().out
    assert "device cpu (" in out and "auto -> " in out
    row = next(line for line in out.splitlines() if line.startswith("resnet20"))
    bf16, fp32, auto, ratio = row.split()[1:]
    assert float(bf16) > 0 and float(fp32) > 0 and float(auto) > 0
    assert ratio.endswith("x") and float(ratio[:-1]) > 0

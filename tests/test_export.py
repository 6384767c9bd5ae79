"""cnnzoo export: ONNX with a dynamic batch, checked with onnxruntime (skipped without it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import assert_one_error_line, make_checkpoint, run_main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cnnzoo.atomic import current_umask  # noqa: E402
from cnnzoo.data import normalize  # noqa: E402
from cnnzoo.data.synthetic import make_synthetic  # noqa: E402
from cnnzoo.inference.export import ExportMismatch, export_onnx  # noqa: E402
from cnnzoo.train import load_checkpoint, model_from_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("export") / "best.pt")


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def test_cli_export_dynamic_batch_and_metadata(ckpt, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, err = run_main(["export", str(ckpt), "-o", str(out)], capsys)
    assert code == 0, err
    assert out.is_file()
    assert "max abs diff" in stdout and "synthetic test split" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # the usual permissions, not mkstemp's private 0600 (a bug found in review)
    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["cnnzoo.mean"]) == [0.5, 0.5, 0.5]
    assert len(json.loads(meta["cnnzoo.classes"])) == 10
    c = load_checkpoint(ckpt)
    model = model_from_checkpoint(c)
    ds = make_synthetic()
    for n in (1, 3, 17):  # the batch dimension is dynamic
        x = normalize(ds.test_x[:n], c["mean"], c["std"], channels_last=False).contiguous()
        with torch.no_grad():
            want = model(x).numpy()
        got = _run(out, x.numpy())
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_include_normalization(ckpt, tmp_path):
    out = tmp_path / "norm.onnx"
    report = export_onnx(ckpt, out, opset=13, include_normalization=True)
    assert report.real_diff is not None and report.real_diff < 1e-3
    c = load_checkpoint(ckpt)
    model = model_from_checkpoint(c)
    x_uint8 = make_synthetic().test_x[:5]
    with torch.no_grad():
        want = model(normalize(x_uint8, c["mean"], c["std"], channels_last=False)).numpy()
    raw = x_uint8.permute(0, 3, 1, 2).float().div(255).contiguous().numpy()
    np.testing.assert_allclose(_run(out, raw), want, atol=1e-4, rtol=0)


def test_tolerance_exceeded_writes_nothing(ckpt, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the user's previous file")
    with pytest.raises(ExportMismatch):
        export_onnx(ckpt, out, atol=1e-30)
    code, _, err = run_main(["export", str(ckpt), "-o", str(out), "--atol", "1e-30"], capsys)
    assert code == 1
    assert "differ" in assert_one_error_line(err)
    assert out.read_bytes() == b"the user's previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_real_check_skipped_without_local_data(tmp_path, monkeypatch):
    """A CIFAR checkpoint with no local copy of CIFAR: random inputs only, no download."""
    path = make_checkpoint(tmp_path / "c.pt")
    c = load_checkpoint(path)
    c["config"] = {**c["config"], "dataset": "cifar10", "data": None}
    torch.save(c, path)
    monkeypatch.setenv("CNNZOO_DATA", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("CNNZOO_OFFLINE", "1")
    report = export_onnx(path, tmp_path / "c.onnx")
    assert report.real_diff is None and "skipped" in report.real_note
    assert (tmp_path / "c.onnx").is_file()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--opset", "3"], "--opset"),
        (["--atol", "-1"], "--atol"),
        (["--data", "/no/such/place"], "no cifar10 data"),
    ],
)
def test_cli_bad_input(ckpt, tmp_path, capsys, argv, needle):
    if "--data" in argv:  # an explicit --data must exist
        path = make_checkpoint(tmp_path / "c.pt")
        c = load_checkpoint(path)
        c["config"] = {**c["config"], "dataset": "cifar10", "data": None}
        torch.save(c, path)
    else:
        path = ckpt
    out = tmp_path / "x.onnx"
    code, _, err = run_main(["export", str(path), "-o", str(out), *argv], capsys)
    assert code == 2
    assert needle in assert_one_error_line(err)
    assert not out.exists()


def test_cli_output_folder_missing(ckpt, tmp_path, capsys):
    code, _, err = run_main(["export", str(ckpt), "-o", str(tmp_path / "no" / "m.onnx")], capsys)
    assert code == 2
    assert "no such folder" in assert_one_error_line(err)


def test_a_nan_on_real_images_fails_the_check(ckpt, tmp_path, monkeypatch):
    """max(random_diff, nan) is random_diff: a NaN on the real images once passed the check."""
    import cnnzoo.inference.export as export

    compare = export._compare

    def nan_on_real(*args, **kwargs):
        random_diff, _, real, note = compare(*args, **kwargs)
        return random_diff, float("nan"), real, note

    monkeypatch.setattr(export, "_compare", nan_on_real)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportMismatch, match="differ by nan"):
        export_onnx(ckpt, out)
    assert not list(tmp_path.iterdir())


def test_a_failed_onnx_write_is_exit_1_and_keeps_the_old_file(ckpt, tmp_path, monkeypatch, capsys):
    """A full disk while saving the labelled model was a traceback; now one line, exit 1."""
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the user's previous file")
    code, _, err = run_main(["export", str(ckpt), "-o", str(out)], capsys)
    assert code == 1
    assert f"cannot write {out}: No space left on device" in assert_one_error_line(err)
    assert out.read_bytes() == b"the user's previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_exporter_failure_is_its_first_line(ckpt, tmp_path, monkeypatch, capsys):
    # The TorchScript exporter's errors go on with a graph dump; the user gets the first line.
    def fail(*args, **kwargs):
        raise RuntimeError("\n  Unsupported: aten::weird_op in opset 17\ngraph(%x : Float(2, 3))\n")

    monkeypatch.setattr(torch.onnx, "export", fail)
    out = tmp_path / "model.onnx"
    code, _, err = run_main(["export", str(ckpt), "-o", str(out)], capsys)
    assert code == 2
    line = assert_one_error_line(err)
    assert "ONNX export failed (opset" in line
    assert "Unsupported: aten::weird_op in opset 17" in line and "graph(" not in line
    assert not out.exists()


def test_export_pretrained_writes_the_shipped_weights(tmp_path, capsys):
    import cnnzoo

    out = tmp_path / "r20.onnx"
    code, stdout, err = run_main(
        ["export", "resnet20", "--pretrained", "-o", str(out), "--data", "synthetic"], capsys
    )
    assert code == 0, err
    assert "exported resnet20" in stdout
    model = cnnzoo.create_model("resnet20", pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(_run(out, x.numpy()) - want).max() < 1e-3  # the shipped weights, not fresh ones
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["cnnzoo.model"] == "resnet20" and "airplane" in props["cnnzoo.classes"]
    code, _, err = run_main(["export", "vgg11", "--pretrained", "-o", str(out)], capsys)
    assert code == 2 and "vgg11" in assert_one_error_line(err)  # nothing shipped for it

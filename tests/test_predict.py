"""cnnzoo predict: image policy, normalisation as in training, top-k, JSON, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.data import normalize
from cnnzoo.data.synthetic import make_synthetic
from cnnzoo.inference.predict import Predictor, load_image, predict_files
from cnnzoo.train import load_checkpoint, model_from_checkpoint
from helpers import assert_one_error_line, make_checkpoint, run_main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("predict") / "best.pt")


def _save(arr: np.ndarray, path):
    Image.fromarray(arr).save(path)  # the mode follows the array: (H,W) L, (H,W,3) RGB, ...
    return path


def test_matches_training_normalisation(ckpt, tmp_path):
    """32x32 RGB PNGs (lossless) give exactly the probabilities of the training pipeline."""
    ds = make_synthetic()
    x = ds.test_x[:6]
    files = [_save(x[i].numpy(), tmp_path / f"img{i}.png") for i in range(len(x))]
    c = load_checkpoint(ckpt)
    model = model_from_checkpoint(c)
    with torch.no_grad():
        want = torch.softmax(model(normalize(x, c["mean"], c["std"], channels_last=False)), 1)
    pred = Predictor(ckpt)
    for i, f in enumerate(files):
        assert torch.equal(load_image(f), x[i])  # a 32x32 image is used pixel for pixel
    got = pred.probabilities(torch.stack([load_image(f) for f in files]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    results = list(predict_files(pred, [str(f) for f in files], top_k=3, batch_size=4))
    for i, r in enumerate(results):
        assert r.error is None and len(r.top_k) == 3
        top = want[i].argmax().item()
        assert r.top_k[0][0] == ds.classes[top]
        assert r.top_k[0][1] == pytest.approx(want[i, top].item(), abs=1e-5)
        probs = [p for _, p in r.top_k]
        assert probs == sorted(probs, reverse=True)


def test_modes_and_sizes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    cases = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((45, 70), 128, np.uint8)])),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "photo.jpg": Image.fromarray(rgb),
        "tall.bmp": Image.fromarray(rng.integers(0, 256, (300, 20, 3), dtype=np.uint8)),
        "tiny.png": Image.fromarray(rgb[:3, :5]),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "la.png": Image.fromarray(rgb[..., 0]).convert("LA"),
        "i16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 200),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        with Image.open(tmp_path / name) as back:
            assert back.mode == im.mode or name == "palette.gif", (name, back.mode)
        x = load_image(tmp_path / name)
        assert x.shape == (32, 32, 3) and x.dtype == torch.uint8, name


def test_transparency_composited_on_white(tmp_path):
    im = np.zeros((32, 32, 4), np.uint8)  # fully transparent black
    _save(im, tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 255).all()


def test_resize_shorter_side_then_centre_crop(tmp_path):
    # 32 high, 96 wide: no resize, only the central third is kept.
    im = np.zeros((32, 96, 3), np.uint8)
    im[:, 32:64] = 200
    _save(im, tmp_path / "wide.png")
    assert (load_image(tmp_path / "wide.png") == 200).all()
    # 64x64 of one colour: resized to 32x32, still that colour.
    _save(np.full((64, 64, 3), 77, np.uint8), tmp_path / "big.png")
    assert (load_image(tmp_path / "big.png") == 77).all()


def test_cli_text_and_bad_files(ckpt, tmp_path, capsys):
    good = _save(np.full((40, 40, 3), 100, np.uint8), tmp_path / "good.png")
    gray = _save(np.full((10, 12), 30, np.uint8), tmp_path / "gray.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    missing = tmp_path / "missing.png"
    files = [good, tmp_path / "notes.txt", missing, gray, tmp_path / "cut.png"]
    files.append(tmp_path / "empty.png")
    code, out, err = run_main(["predict", str(ckpt), *map(str, files), "--top-k", "2"], capsys)
    assert code == 2
    # results for the good files are all there
    assert str(good) in out and str(gray) in out
    assert len([ln for ln in out.splitlines() if ln.startswith("  ")]) == 4
    errs = err.strip().splitlines()
    assert len(errs) == 4, err
    assert all(ln.startswith("error: ") for ln in errs)
    assert any(str(missing) in ln and "no such file" in ln for ln in errs)
    assert any("notes.txt" in ln and "not an image" in ln for ln in errs)
    assert any("cut.png" in ln for ln in errs)


def test_cli_json(ckpt, tmp_path, capsys):
    good = _save(np.full((32, 32, 3), 10, np.uint8), tmp_path / "a.png")
    code, out, err = run_main(
        ["predict", str(ckpt), str(good), str(tmp_path / "nope.jpg"), "--json", "--top-k", "50"],
        capsys,
    )
    assert code == 2
    rows = json.loads(out)
    assert rows[0]["file"] == str(good)
    assert len(rows[0]["top_k"]) == 10  # clamped to the number of classes
    assert sum(r["prob"] for r in rows[0]["top_k"]) == pytest.approx(1.0, abs=1e-4)
    assert set(rows[0]["top_k"][0]) == {"class", "prob"}
    assert rows[1] == {"file": str(tmp_path / "nope.jpg"), "error": "no such file"}
    assert_one_error_line(err)


def test_cli_all_good_exit_zero_and_run_dir(ckpt, tmp_path, capsys):
    files = [str(_save(np.full((8, 8, 3), i, np.uint8), tmp_path / f"{i}.png")) for i in range(5)]
    code, out, err = run_main(
        ["predict", str(ckpt.parent), *files, "--batch-size", "2", "--json"], capsys
    )
    assert code == 0, err
    assert [r["file"] for r in json.loads(out)] == files


@pytest.mark.parametrize(
    "argv",
    [["--top-k", "0"], ["--batch-size", "0"]],
)
def test_cli_bad_options(ckpt, tmp_path, capsys, argv):
    img = _save(np.zeros((32, 32, 3), np.uint8), tmp_path / "x.png")
    code, _, err = run_main(["predict", str(ckpt), str(img), *argv], capsys)
    assert code == 2
    assert_one_error_line(err)


def test_cli_missing_checkpoint(tmp_path, capsys):
    code, _, err = run_main(["predict", str(tmp_path / "none.pt"), "x.png"], capsys)
    assert code == 2
    assert "no checkpoint" in assert_one_error_line(err)

"""Safety: checkpoints never run code, archives never write outside their target, no shell."""

from __future__ import annotations

import ast
import tarfile
from pathlib import Path

import pytest
import torch

from cnnzoo.data.archive import check_member, read_tar_members, safe_extract
from cnnzoo.errors import UserError, one_line
from cnnzoo.train import load_checkpoint
from helpers import (
    ROOT,
    TINY_TRAIN,
    assert_one_error_line,
    make_bad_tar,
    make_checkpoint,
    run_main,
)

SRC = ROOT / "src" / "cnnzoo"


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class Custom:
    """An arbitrary class: unpickling needs to import this module."""

    def __init__(self) -> None:
        self.x = 1


def _evil_checkpoint(path: Path, marker: Path, payload=None) -> Path:
    good = make_checkpoint(path)
    ckpt = torch.load(good, weights_only=True)
    ckpt["extra"] = Payload(marker) if payload is None else payload
    torch.save(ckpt, path)
    return path


def test_payload_is_real(tmp_path):
    """The crafted file runs code when loaded unsafely (so the refusals below mean something)."""
    marker = tmp_path / "pwned"
    path = _evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", ["exec", "custom-class"])
def test_load_checkpoint_refuses_pickled_objects(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = Custom() if kind == "custom-class" else None
    path = _evil_checkpoint(tmp_path / "evil.pt", marker, payload)
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "eval", "export", "resume"])
def test_cli_refuses_pickled_objects(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    path = _evil_checkpoint(run / ("last.pt" if command == "resume" else "best.pt"), marker)
    argv = {
        "predict": ["predict", str(path), str(tmp_path / "x.png")],
        "eval": ["eval", str(path), "--data", "synthetic"],
        "export": ["export", str(path), "-o", str(tmp_path / "m.onnx")],
        "resume": ["train", "--resume", str(run)],
    }[command]
    if command == "export":
        pytest.importorskip("onnxruntime")
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert "refused to load" in assert_one_error_line(err)
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                kw = {k.arg: k.value for k in node.keywords}
                ok = (
                    isinstance(kw.get("weights_only"), ast.Constant)
                    and kw["weights_only"].value is True
                )
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
    assert calls, "expected checkpoint loading in the package"
    assert all(ok for _, ok in calls), [where for where, ok in calls if not ok]


def test_no_shell_commands():
    """No os.system/os.popen, no shell=True, and subprocess only with argument lists."""
    bad = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            attr = node.func.attr
            shell_like = attr in ("system", "popen") or attr.startswith(("exec", "spawn"))
            if owner == "os" and shell_like:
                bad.append(where)
            for k in node.keywords:
                off = isinstance(k.value, ast.Constant) and not k.value.value
                if k.arg == "shell" and not off:
                    bad.append(where)
            if owner == "subprocess" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp):
                    bad.append(where)  # a command line string
    assert not bad, bad


# ---- archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_tar_members_refused(tmp_path, kind):
    target = str(tmp_path / "outside.txt") if kind in ("absolute",) else "/etc/passwd"
    if kind == "symlink":
        target = "../../outside.txt"
    tar_path = make_bad_tar(tmp_path / "bad.tar.gz", kind, target)
    with tarfile.open(tar_path) as tar:
        bad = [m for m in tar.getmembers() if not m.name.endswith("readme.txt")]
    with pytest.raises(UserError, match="unsafe archive member"):
        check_member(bad[0])
    with pytest.raises(UserError, match="unsafe archive member"):
        read_tar_members(tar_path, {"test_batch", "readme.txt"})
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(UserError, match="unsafe archive member"):
        safe_extract(tar_path, dest)
    assert not list(dest.rglob("*")), "nothing extracted, not even the safe member"
    assert not (tmp_path / "outside.txt").exists()
    assert not (tmp_path / "a" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_extracts_a_good_archive(tmp_path):
    import io

    src = tmp_path / "ok.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        info = tarfile.TarInfo("folder/file.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    safe_extract(src, tmp_path / "dest")
    assert (tmp_path / "dest" / "folder" / "file.txt").read_bytes() == b"hi"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_cli_unsafe_archive(tmp_path, capsys, monkeypatch, kind):
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    tar_path = make_bad_tar(tmp_path / "cifar-10-python.tar.gz", kind, "/etc/passwd")
    out = tmp_path / "run"
    code, _, err = run_main([*TINY_TRAIN[:2], "--data", str(tar_path), "--out", str(out)], capsys)
    assert code == 2
    assert "unsafe archive member" in assert_one_error_line(err)
    assert not (tmp_path / "escape.txt").exists()
    assert not (out.exists() and any(out.iterdir()))


def test_archive_extraction_uses_data_filter():
    text = (SRC / "data" / "archive.py").read_text()
    assert 'filter="data"' in text


def test_too_many_tar_members_are_refused(tmp_path, monkeypatch):
    """Millions of empty members (a few bytes each, compressed) would fill memory with headers:
    past the cap the archive is refused, both when read and when extracted."""
    import io

    from cnnzoo.data import archive

    monkeypatch.setattr(archive, "MAX_MEMBERS", 5, raising=False)  # (old code: no cap at all)

    def tar_of(n: int, path: Path) -> Path:
        with tarfile.open(path, "w") as tar:
            for i in range(n):
                tar.addfile(tarfile.TarInfo(f"folder/{i}"), io.BytesIO(b""))
        return path

    ok = tar_of(5, tmp_path / "ok.tar")
    assert read_tar_members(ok, {"0"}) == {"0": b""}
    bomb = tar_of(6, tmp_path / "bomb.tar")
    with pytest.raises(UserError, match="more than 5 members"):
        read_tar_members(bomb, {"0"})
    dest = tmp_path / "dest"
    with pytest.raises(UserError, match="more than 5 members"):
        safe_extract(bomb, dest)
    assert not list(dest.rglob("*")), "nothing extracted"


def test_one_line_keeps_the_first_line_or_the_type_name() -> None:
    err = RuntimeError("\n  first   problem\n<dump line 1>\n<dump line 2>")
    assert one_line(err, first_line=True) == "first problem"
    assert one_line(err) == "first problem <dump line 1> <dump line 2>"
    assert one_line(EOFError(), first_line=True) == "EOFError"
    assert one_line(ValueError("x" * 300), 10, first_line=True) == "x" * 10 + "..."


@pytest.mark.parametrize("error", [EOFError(), RuntimeError(""), OSError()])
def test_a_checkpoint_read_error_without_text_is_still_one_line(error, tmp_path, monkeypatch):
    # str(err).splitlines()[0] raised IndexError on an error with no message.
    path = make_checkpoint(tmp_path / "best.pt")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(UserError, match=f"cannot read checkpoint .*: {type(error).__name__}$"):
        load_checkpoint(path)

"""The GPU campaign script runs end to end on the CPU (dry run), so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnzoo.models import list_models
from cnnzoo.train.recipes import RECIPES
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_campaign


def test_committed_job_list_is_valid() -> None:
    jobs = json.loads(gpu_campaign.JOBS.read_text())["jobs"]
    assert len({j["id"] for j in jobs}) == len(jobs)
    for j in jobs:
        assert j["model"] in list_models() and j["est_s_h100"] > 0
        if "--recipe" in j["args"]:
            assert j["args"][j["args"].index("--recipe") + 1] in RECIPES
    groups = [j["group"][0] for j in jobs]
    assert groups == sorted(groups)  # (a) the notebook's experiment first, then b, c, d


@pytest.mark.slow
def test_dry_run_then_ingest_marks_jobs_done(tmp_path) -> None:
    jobs = [
        {"id": "r20", "group": "a", "model": "resnet20", "args": ["--seed", "1"], "est_s_h100": 9},
        {
            "id": "fast",
            "group": "b",
            "model": "fastnet",
            "args": ["--recipe", "fast"],
            "est_s_h100": 9,
        },
        {"id": "never", "group": "c", "model": "resnet20", "args": [], "est_s_h100": 9},
    ]
    job_file = tmp_path / "jobs.json"
    job_file.write_text(json.dumps({"jobs": jobs}))
    out, results = tmp_path / "out", tmp_path / "results"
    argv = ["--out", str(out), "--results", str(results), "--jobs-file", str(job_file)]
    assert gpu_campaign.main(["run", "--dry-run", "--jobs", "2", *argv]) == 0
    with tarfile.open(out / "campaign.tar.gz") as tar:
        names = set(tar.getnames())
    for job in ("r20", "fast"):
        for f in ("summary.json", "config.json", "metrics.jsonl", "job.json"):
            assert f"campaign/{job}/{f}" in names
        assert f"campaign/{job}/best-fp16.safetensors" in names  # small models' weights
    assert "r20: test acc" in (out / "campaign-log.txt").read_text()
    assert (
        gpu_campaign.main(["ingest", str(out / "campaign.tar.gz"), "--results", str(results)]) == 0
    )
    pending = gpu_campaign.pending(jobs, results)
    assert [j["id"] for j in pending] == ["never"]  # the next call starts where this one stopped
    info = json.loads((results / "fast" / "job.json").read_text())
    assert "--recipe fast" in info["command"] and info["wall_seconds"] > 0


def _job(job_id: str, est: int) -> dict:
    return {"id": job_id, "group": "d", "model": "resnet20", "args": [], "est_s_h100": est}


def test_jobs_that_do_not_fit_are_skipped_and_later_ones_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training replaced by a stub that takes ``took`` seconds of a fake clock (which, as a real
    one, also moves a little between readings): a job estimated at the whole budget runs when it
    comes first, one that no longer fits is passed over for a later shorter one, and one above
    the whole budget is named as never fitting."""
    took = {"whole": 300, "big": 0, "mid": 0, "small": 40}
    clock, ran = [1000.0], []

    def monotonic() -> float:
        clock[0] += 0.001
        return clock[0]

    def run(cmd: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"test_acc": 0.5, "params": 10**9}))
        ran.append(out.name)
        clock[0] += took[out.name]
        return subprocess.CompletedProcess(cmd, 0)

    fake_subprocess = SimpleNamespace(run=run, TimeoutExpired=subprocess.TimeoutExpired)
    monkeypatch.setattr(gpu_campaign, "subprocess", fake_subprocess)
    monkeypatch.setattr(gpu_campaign, "time", SimpleNamespace(monotonic=monotonic))
    jobs = [_job("whole", 480), _job("big", 700), _job("mid", 200), _job("small", 50)]
    job_file = tmp_path / "jobs.json"
    job_file.write_text(json.dumps({"jobs": jobs}))
    out = tmp_path / "out"
    argv = ["run", "--out", str(out), "--results", str(tmp_path / "results")]
    argv += ["--jobs-file", str(job_file), "--data", "cifar10", "--budget", "480"]
    assert gpu_campaign.main(argv) == 0
    assert ran == ["whole", "small"]
    log = (out / "campaign-log.txt").read_text()
    assert "never fits: big needs ~700 s, more than the whole --budget 480 s" in log
    assert "skip for now: mid needs ~200 s, 180 s left" in log
    with tarfile.open(out / "campaign.tar.gz") as tar:
        assert {"campaign/whole/job.json", "campaign/small/job.json"} <= set(tar.getnames())


def test_pack_without_travel_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_campaign.main(["run", "--out", str(tmp_path), "--pack", "cifar10.npz"])
    assert exit_info.value.code == 2
    assert "--pack needs --travel" in capsys.readouterr().err

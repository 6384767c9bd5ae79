"""The GPU campaign script runs end to end on the CPU (dry run), so it cannot rot."""

from __future__ import annotations

import json
import sys
import tarfile

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

"""The GPU check's dry run: every stage runs on the CPU at tiny sizes and records its status,
time and figures, and the JSON is written after each stage."""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_every_stage(tmp_path):
    check = runpy.run_path(str(ROOT / "scripts" / "gpu_check.py"))
    result = check["main"](["--tiny", "--out", str(tmp_path)])
    assert list(result["stages"]) == ["environment", "train_step", "decode", "memory", "medium", "speculative"]
    for name, stage in result["stages"].items():
        assert stage["status"] == "ok", (name, stage)
        assert stage["seconds"] > 0
    assert result["stages"]["train_step"]["tokens_per_s"] > 0 and result["stages"]["train_step"]["batch"][0] >= 1
    assert all(row["batch_1_tokens_per_s"] > 0 for row in result["stages"]["decode"]["rows"].values())
    assert result["stages"]["memory"]["ran"]
    assert result["stages"]["speculative"]["rows"]["k=4"]["acceptance_rate"] is not None
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == result
    assert "| train_step | ok |" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_skips_a_stage_that_would_overrun(tmp_path):
    check = runpy.run_path(str(ROOT / "scripts" / "gpu_check.py"))
    result = check["main"](["--tiny", "--out", str(tmp_path), "--budget-s", "4"])
    assert result["stages"]["environment"]["status"] == "ok"
    skipped = [name for name, stage in result["stages"].items() if stage["status"] == "skipped"]
    assert skipped and "budget" in result["stages"][skipped[0]]["reason"]

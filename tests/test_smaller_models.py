"""The smaller-model experiments (experiments.smaller_models): their runs are valid run configs at
both scales, and two of them run in-process end to end on a tiny teacher, their JSON saved and
question 5's tables generated from it."""

import json
from pathlib import Path

import pytest
from conftest import jaxlm, tiny_config

from bench.variants import VariantSpec
from experiments import common, q5_cheaper_inference, smaller_models

TINY = smaller_models.Scale(steps=4, sparsities=(0.5,), importance_batches=1, eval_batches=1, head_counts=(1,),
                            timing=VariantSpec(batch_size=2, seq_len=16, prompt_len=4, new_tokens=4, steps=2, warmup=0))


@pytest.mark.parametrize("scale", [smaller_models.CPU, smaller_models.FULL])
def test_each_experiments_runs_are_the_main_jobs_changed(corpus, tmp_path, scale):
    main = tiny_config(corpus, tmp_path / "teacher")
    alone, taught = smaller_models.distill_configs(main, tmp_path, scale, str(tmp_path / "teacher"))
    for config in (alone, taught):
        assert (config.model.n_layer, config.model.d_model, config.model.n_head, config.model.d_ff) == (2, 128, 2, 512)
        assert (config.steps, config.data, config.seed) == (scale.steps, main.data, main.seed)
    assert (alone.task.name, taught.task.name) == ("lm", "distill")
    assert (taught.task.distill.teacher, taught.task.distill.temperature) == (str(tmp_path / "teacher"), 2.0)
    assert Path(taught.run_dir) == tmp_path / "student-distilled"

    full, adaptive = smaller_models.adaptive_configs(main, tmp_path, scale, "gpt2-bpe", (3000, 14000))
    assert full.model.vocab_size == adaptive.model.vocab_size == 50257 and full.data.tokenizer == "gpt2-bpe"
    assert (tuple(full.model.adaptive_cutoffs), tuple(adaptive.model.adaptive_cutoffs)) == ((), (3000, 14000))

    pruned = smaller_models.prune_configs(main, tmp_path, scale)
    assert list(pruned) == [0.0, 0.5, 0.9] and pruned[0.0].optimizer.pruning is None
    assert [c.optimizer.pruning.target_sparsity for c in list(pruned.values())[1:]] == [0.5, 0.9]
    assert pruned[0.9].optimizer.pruning.end_step == scale.steps * 7 // 10


@pytest.mark.slow
def test_distillation_and_head_pruning_run_in_process(corpus, tmp_path, monkeypatch):
    main = tiny_config(corpus, tmp_path / "teacher")
    monkeypatch.setattr(smaller_models, "CPU", TINY)
    monkeypatch.setattr(smaller_models, "main_job", lambda: main)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "REPORT", tmp_path / "REPORT.md")
    common.REPORT.write_text("".join(f"<!-- table:q5-{n} -->\n<!-- /table:q5-{n} -->\n" for n in ("distill", "heads")))

    summary = jaxlm("experiments", "smaller-distill", "--out", tmp_path / "runs")
    assert summary["report_tables"] == ["q5-distill"]
    result = json.loads((tmp_path / "results" / "smaller-distill.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["teacher (gpt2-mini, 300 steps)", "student alone",
                                                      "student distilled"]
    assert result["rows"][2]["steps"] == 4 and result["full"] is False and result["distill"]["alpha"] == 0.5
    assert (tmp_path / "teacher" / "checkpoints").exists()  # trained, being missing
    assert (tmp_path / "runs" / "smaller" / "cpu" / "student-distilled" / "run.json").exists()

    jaxlm("experiments", "smaller-heads", "--out", tmp_path / "runs")
    result = json.loads((tmp_path / "results" / "smaller-heads.json").read_text())
    assert [r["variant"].split(":")[0] for r in result["rows"]] == ["0 of 8 heads", "1 of 8 heads",
                                                                    "2 heads (1 per layer)"]
    assert result["rows"][1]["params"] < result["rows"][0]["params"]
    assert "load" in result["rows"][0]  # other processes' CPU use while timed, in the caption
    assert ", decoding with the KV cache; " in common.REPORT.read_text()

    report = common.REPORT.read_text()
    saved_q5 = json.loads((Path(q5_cheaper_inference.__file__).parent / "results" / "q5.json").read_text())
    tables = q5_cheaper_inference.tables(saved_q5)
    for name in ("distill", "heads"):
        assert f"`jaxlm experiments smaller-{name}`" in tables[f"q5-{name}"] and tables[f"q5-{name}"] in report
    assert tables["q5-prune"] == ("Not run here: `jaxlm experiments smaller-prune` writes "
                                  "experiments/results/smaller-prune.json.")

"""The report's tables are the experiments' JSON: regenerating them from experiments/results/
changes nothing in REPORT.md, and the report's markers are filled, never typed by hand; an
experiment runs in-process by name (``jaxlm experiments NAME``), its JSON saved and its tables
written."""

import json
import re
import sys
import types

import pytest
from conftest import jaxlm

import experiments
from experiments import common


@pytest.mark.parametrize("name", list(experiments.EXPERIMENTS))
def test_report_tables_are_generated_from_the_saved_json(name):
    found, result_name = experiments.experiment(name)
    result = common.load(result_name)
    report = common.REPORT.read_text()
    for table_name, table in found.tables(result).items():
        block = re.search(rf"<!-- table:{re.escape(table_name)} -->\n(.*?)<!-- /table:{re.escape(table_name)} -->",
                          report, re.S)
        assert block, f"REPORT.md has no markers for {table_name}"
        assert block.group(1) == table.rstrip("\n") + "\n", f"{table_name} differs from what {name}'s JSON gives"


def test_write_report_refuses_a_table_without_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "REPORT", tmp_path / "REPORT.md")
    common.REPORT.write_text("<!-- table:a -->\nold\n<!-- /table:a -->\n")
    assert common.write_report({"a": "| new |"}) == ["a"]
    assert common.REPORT.read_text() == "<!-- table:a -->\n| new |\n<!-- /table:a -->\n"
    with pytest.raises(ValueError, match="no <!-- table:b -->"):
        common.write_report({"b": "x"})


class Counting:
    """An experiment that records how it was run and saves its arguments."""

    def __init__(self):
        self.calls = []

    def run(self, full=False, runs=None):
        self.calls.append((full, runs))
        return {"full": full, "runs": str(runs)}

    def tables(self, result):
        return {"counted": f"| full | {result['full']} |"}


@pytest.fixture
def counting(tmp_path, monkeypatch):
    """``jaxlm experiments counting`` runs a :class:`Counting` (an entry of a module's
    ``EXPERIMENTS``, as the smaller-model experiments are), its JSON and REPORT.md under ``tmp_path``."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "REPORT", tmp_path / "REPORT.md")
    common.REPORT.write_text("before\n<!-- table:counted -->\n<!-- /table:counted -->\nafter\n")
    experiment = Counting()
    monkeypatch.setitem(sys.modules, "counting_experiments", types.SimpleNamespace(EXPERIMENTS={"one": experiment}))
    monkeypatch.setitem(experiments.EXPERIMENTS, "counting", "counting_experiments:one")
    return experiment


def test_an_experiment_runs_in_process_saves_its_json_and_fills_its_tables(counting, tmp_path):
    summary = jaxlm("experiments", "counting", "--full", "--out", tmp_path / "runs")
    assert counting.calls == [(True, tmp_path / "runs")]
    assert summary == {"question": "counting", "results": str(tmp_path / "results" / "counting.json"),
                       "report_tables": ["counted"]}
    assert json.loads((tmp_path / "results" / "counting.json").read_text()) == {"full": True,
                                                                               "runs": str(tmp_path / "runs")}
    assert common.REPORT.read_text() == ("before\n<!-- table:counted -->\n| full | True |\n"
                                         "<!-- /table:counted -->\nafter\n")
    (tmp_path / "results" / "counting.json").write_text(json.dumps({"full": "saved"}))
    assert jaxlm("experiments", "counting", "--report")["report_tables"] == ["counted"]
    assert len(counting.calls) == 1 and "| full | saved |" in common.REPORT.read_text()


def test_unknown_and_unrun_experiments_are_named(counting, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        jaxlm("experiments", "q9")
    assert e.value.code == 2 and "smaller-heads" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown experiment 'q9'; choose one of q1, "):
        experiments.run_question("q9")
    (tmp_path / "results" / "counting.json").unlink(missing_ok=True)
    with pytest.raises(SystemExit) as e:
        jaxlm("experiments", "counting", "--report")
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'results' / 'counting.json'} does not exist: run "
                                       "`jaxlm experiments counting` first\n")


def sotu_like(corpus) -> dict:
    """The corpus fixture in the shape of ``common.sotu_files``."""
    return {"train": str(corpus[0] / "train.jsonl"), "validation": str(corpus[0] / "validation.jsonl"),
            "tokenizer": str(corpus[1])}


def test_the_questions_runs_are_valid_run_configs(corpus, labelled_data, tmp_path):
    """Every run of questions 1-3 at both scales is a run config that passes its checks."""
    import jax

    import models
    from experiments import q1_gpt_vs_gpt2 as q1
    from experiments import q2_gpt_vs_bert as q2
    from experiments import q3_bert_vs_albert as q3
    from train.checkpoint import save_params

    files = sotu_like(corpus)
    for s in (q1.CPU, q1.ACCELERATOR):
        for variant, (pre_ln, final_ln, scaled) in q1.VARIANTS.items():
            config = q1.run_config(s, files, s.depths[-1], variant, False, 1, s.low_learning_rate)
            assert (config.model.pre_ln, config.model.final_ln, config.model.scale_residual_init) == (pre_ln, final_ln,
                                                                                                      scaled)
            assert (config.model.n_layer, config.data.seq_len, config.optimizer.warmup_steps) == (s.depths[-1],
                                                                                                  s.seq_len, 0)
            assert (config.optimizer.learning_rate, config.seed, config.model.attn_dropout) == (s.low_learning_rate, 1,
                                                                                                0.0)

    for s in (q2.CPU, q2.ACCELERATOR):
        for preset, task in q2.BODIES.values():
            config = q2.pretrain_config(s, preset, task, files)
            assert (config.model.d_model, config.model.n_layer, config.task.name) == (s.width, s.layers, task)
    body = q2.pretrain_config(q2.CPU, "bert-mini", "mlm_nsp", files).model
    source = save_params(tmp_path / "body", body, models.init_params(body.module(), jax.random.key(0)),
                         {"data.tokenizer": files["tokenizer"], "task.name": "mlm_nsp"})
    task = {"train": labelled_data / "train.jsonl", "test": labelled_data / "test.jsonl"}
    config = q2.finetune_config(q2.CPU, source, task, 1)
    assert (config.task.name, config.init_from, config.data.eval, config.optimizer.schedule) == (
        "classify", str(source), str(task["test"]), "stlr")
    assert config.model.d_model == body.d_model and config.task.classifier.pooling == "concat"

    for s in (q3.CPU, q3.ACCELERATOR):
        for shared, dropout in q3.VARIANTS.values():
            config = q3.pretrain_config(s, shared, dropout, 0, files)
            assert config.model.n_groups == (1 if shared else config.model.n_layer)
            assert config.model.attn_dropout == (s.dropout if dropout else 0.0) and config.task.name == "mlm_sop"


def test_gradient_norms_at_initialisation_come_from_a_real_batch(corpus):
    import dataclasses

    from experiments import q1_gpt_vs_gpt2 as q1

    tiny = dataclasses.replace(q1.CPU, d_model=16, n_head=2, seq_len=16, batch_size=2)
    norms = q1.layer_grad_norms(q1.run_config(tiny, sotu_like(corpus), 2, "GPT (post-LN)", True, 0))
    assert len(norms) == 2 and all(n > 0 for n in norms)


def test_run_log_keeps_finished_runs_for_a_rerun(tmp_path):
    """An experiment's results.jsonl: a new log reads what an earlier one wrote, and a later line
    for the same run (more scores) replaces the earlier."""
    log = common.RunLog(tmp_path / "q" / "results.jsonl", ("seed", "rate"))
    log.add({"seed": 0, "rate": 1e-3, "validation": 0.5})
    log.add({"seed": 1, "rate": 1e-3, "validation": 0.6})
    log.add({"seed": 0, "rate": 1e-3, "validation": 0.5, "test": 0.4})
    again = common.RunLog(tmp_path / "q" / "results.jsonl", ("seed", "rate"))
    assert again.runs == log.runs == {(0, 1e-3): {"seed": 0, "rate": 1e-3, "validation": 0.5, "test": 0.4},
                                      (1, 1e-3): {"seed": 1, "rate": 1e-3, "validation": 0.6}}
    assert common.RunLog(tmp_path / "none.jsonl", ("seed",)).runs == {}

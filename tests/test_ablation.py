"""The ULMFiT ablation's pieces (experiments.ulmfit_methods): cumulative methods per row, the rate
chosen per row on the validation split, one real (tiny) run, the table and plot."""

import jax
import pytest
from conftest import tiny_config

import models
from bench.bag_of_words import tfidf_logistic_regression
from experiments import ulmfit_methods as ablation
from train.checkpoint import load_params, save_params


@pytest.mark.slow
def test_rows_add_the_methods_one_at_a_time_and_score_the_test_rows(corpus, labelled_data, tmp_path):
    lm = tiny_config(corpus, tmp_path / "lm")
    source = save_params(tmp_path / "lm", lm.model, models.init_params(lm.model.module(), jax.random.key(0)),
                         {"data.tokenizer": lm.data.tokenizer})
    size = ablation.Size(seq_len={"gpt2": 32}, steps={"gpt2": 10}, batch_size=4, test_rows=None)
    files = {s: labelled_data / f"{s}.jsonl" for s in ("train", "validation", "test")}
    configs = [ablation.run_config("gpt2", source, files, v, 0, size, tmp_path / v, 1e-3) for v in ablation.VARIANTS]
    assert [c.optimizer.schedule for c in configs] == ["constant"] + ["stlr"] * 4
    assert [c.optimizer.discriminative_factor for c in configs] == [1.0, 1.0, 2.6, 2.6, 2.6]
    assert [c.optimizer.unfreeze_every for c in configs] == [0, 0, 0, 1, 1]  # 10 steps // (2 x (4 groups - 1))
    assert [c.task.classifier.pooling for c in configs] == ["last"] * 4 + ["concat"]
    assert {(c.task.name, c.init_from, c.data.tokenizer, c.data.seq_len, c.data.eval, c.optimizer.learning_rate)
            for c in configs} == {("classify", str(source), lm.data.tokenizer, 32, str(files["validation"]), 1e-3)}
    side = {v: ablation.run_config("gpt2", source, files, v, 0, size, tmp_path / v, 1e-2) for v in ablation.SIDE}
    assert {v: (c.optimizer.schedule, c.optimizer.discriminative_factor, c.optimizer.unfreeze_every,
                c.task.classifier.pooling, c.model.lora_rank) for v, c in side.items()} == {
        "+stlr +gradual": ("stlr", 1.0, 1, "last", 0), "+stlr +concat": ("stlr", 1.0, 0, "concat", 0),
        "+stlr +lora": ("stlr", 1.0, 0, "last", 8), "+stlr +last": ("stlr", 1.0, 0, "last", 0)}
    assert all(c.model.lora_rank == 0 for c in configs) and side["+stlr +last"].optimizer.feature_extraction
    # forgetting: a body that never trains (last layer only) keeps the pretrained model's loss exactly;
    # LoRA's merged body moves
    tokens = ablation.pretraining_slice(lm.data.tokenizer, str(corpus[0] / "validation.jsonl"), 16, blocks=4)
    _, pretrained_config, pretrained, _ = load_params(source)
    before = ablation.lm_loss(pretrained_config, pretrained, tokens)
    last = ablation.run_one(side["+stlr +last"].replace({"data.label_field": "topic"}), files["test"], tokens)
    assert last["lm_loss_after"] == before and 0 < before < 10
    lora_run = ablation.run_one(side["+stlr +lora"].replace({"data.label_field": "topic"}), files["test"], tokens)
    assert lora_run["steps"] == 10 and 0 <= lora_run["macro_f1"] <= 1 and lora_run["lm_loss_after"] != before
    # without a test file: validation scores only, the weights kept for the test pass once the rate is chosen
    result = ablation.run_one(configs[-1].replace({"data.label_field": "topic"}))
    assert result["steps"] == 10 and "macro_f1" not in result and 0 <= result["validation_macro_f1"] <= 1
    test = ablation.test_scores(tmp_path / "+concat", files["test"])
    assert test["test_rows"] == 12 and 0 <= test["macro_f1"] <= 1
    assert not (tmp_path / "+concat" / "checkpoints").exists()


def test_each_row_keeps_the_rate_with_the_best_validation_score():
    runs = [{"model": "gpt2", "task": "t", "variant": "+stlr", "seed": 0, "rate": rate, "validation_macro_f1": f1}
            for rate, f1 in ((1e-4, 0.5), (3e-4, 0.8), (1e-3, 0.8), (3e-3, 0.4))]
    runs += [{"model": "gpt2", "task": "t", "variant": "+stlr", "seed": s, "rate": 3e-4, "validation_macro_f1": 0.1}
             for s in (1, 2)]  # other seeds do not choose
    assert ablation.chosen_rates(runs) == {("gpt2", "t", "+stlr"): 3e-4}  # a tie: the lower rate
    assert [(r["seed"], r["rate"]) for r in ablation.at_chosen_rates(runs)] == [(0, 3e-4), (1, 3e-4), (2, 3e-4)]
    assert ablation.rate_grid("gpt2", "+stlr") == (1e-4, 3e-4, 1e-3, 3e-3)
    assert ablation.rate_grid("gpt2", "+stlr +lora") == (1e-3, 3e-3, 1e-2, 3e-2)  # the body does not train
    assert max(ablation.rate_grid("minilm", "plain")) / min(ablation.rate_grid("minilm", "plain")) == pytest.approx(100 / 3)


def test_each_question_runs_the_rows_its_tables_read():
    cpu = ablation.CPU
    assert ablation.rows_of("q6", "gpt2", cpu) == ("plain", "+stlr")
    assert ablation.rows_of("q8", "gpt2", cpu) == ("+stlr", "+discr", "+gradual", "+stlr +gradual", "+stlr +lora",
                                                   "+stlr +last")
    assert ablation.rows_of("q8", "minilm", cpu) == ("+discr", "+gradual")  # no side rows, no forgetting on CPU
    assert ablation.rows_of(None, "minilm", ablation.FULL)[-1] == "+stlr +last"
    runs = [{"model": "gpt2", "variant": v, "seconds": 60.0} for v in ("plain", "+stlr", "+stlr +last")]
    assert ablation.question_minutes(runs, cpu) == {"q6": 2.0, "q7": 1.0, "q8": 2.0, "q6-q8": 3.0}


def test_table_and_plot(tmp_path):
    results = [{"model": "gpt2", "task": "t", "variant": v, "seed": s, "rate": 1e-3, "validation_macro_f1": 0.5,
                "accuracy": 0.5 + 0.1 * i + 0.01 * s, "macro_f1": 0.4 + 0.1 * i, "steps": 10, "seconds": 3.0}
               for i, v in enumerate(ablation.VARIANTS) for s in range(3)]
    base = tfidf_logistic_regression(["war war", "peace peace", "war", "peace"], ["a", "b", "a", "b"],
                                     ["war", "peace"], ["a", "b"], ("a", "b"))
    assert base["accuracy"] == 1.0 and base["per_class"]["a"]["examples"] == 1
    rows = ablation.aggregate(results, {"t": base}, ["gpt2"], ["t"])
    assert rows[0]["accuracy"] == pytest.approx((0.51, 0.01))
    table = ablation.markdown(rows, "caption")
    assert "| t | gpt2 | +concat | 0.001 | 0.910 ± 0.010 | 0.800 ± 0.000 | 10 | 3 |" in table
    assert "| t | TF-IDF + LR | bag of words | - | 1.000 | 1.000 | - |" in table
    assert "| t | gpt2 | plain | **0.001: 0.500** (an end of the grid) |" in ablation.rates_table({"runs": results})
    ablation.plot(rows, tmp_path / "a.png", ["gpt2"], ["t"])
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_paired_intervals_and_the_papers_figures():
    """A paired t-interval recomputed by hand; an interval holding zero reads "no measurable effect"."""
    deltas = [0.10, 0.12, 0.08]
    interval = ablation.paired_interval(deltas)
    half = 4.302652729911275 * 0.02 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert interval["mean"] == pytest.approx(0.10) and interval["high"] == pytest.approx(0.10 + half)
    assert ablation.effect(interval) == f"+0.100 [{0.10 - half:+.3f}, {0.10 + half:+.3f}]"
    assert ablation.effect(ablation.paired_interval([0.1, -0.05, 0.02])).endswith("no measurable effect")
    assert "one seed" in ablation.effect(ablation.paired_interval([0.1]))
    table = ablation.paper_table()
    assert "| Freez + stlr | 5.04 | 6.02 | 5.35 |" in table and "AWD-LSTM" in table


def test_forgetting_table_pairs_each_method_with_plain_stlr():
    runs = [{"task": "t", "model": "gpt2", "variant": v, "seed": seed, "rate": 1e-3, "validation_macro_f1": 0.5,
             "macro_f1": 0.5, "forgetting": f + 0.01 * seed}
            for v, f in (("+stlr", 0.2), ("+stlr +gradual", 0.1), ("+stlr +last", 0.0)) for seed in range(3)]
    table = ablation.forgetting_table({"runs": runs})
    assert ("| t | gpt2 | +stlr +last | 0.001 / 0.001 | 0.500 ± 0.000 | 0.210 ± 0.010 | 0.010 ± 0.010 | "
            "-0.200 [-0.200, -0.200] |") in table
    assert "+stlr +lora" not in table  # no runs of it: no row
    assert "not measured" in ablation.forgetting_table({"runs": [dict(r, forgetting=None) for r in runs]})

"""BERT/ALBERT pretraining data: pairs, truncation, masking statistics, resumption."""

import numpy as np
import pytest
from conftest import tiny_config

from train.data import sentence_pairs
from train.data.sentence_pairs import PairEncoder, SentencePairBatches, build_pair, make_pairs, mask_tokens

SPECIALS = {"cls": 1, "sep": 2, "mask": 3, "pad": 0, "vocab_size": 100}


def synthetic_docs(n_docs=40, seed=0):
    """Documents whose sentences are runs of consecutive ids (doc d, sentence s -> 10 + ...), so
    the order of segments can be checked."""
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        sentences, start = [], 10
        for _ in range(rng.integers(3, 9)):
            length = int(rng.integers(3, 12))
            sentences.append(np.arange(start, start + length) % 90 + 10)
            start += length
        docs.append(sentences)
    return docs


def test_pair_layout_and_truncation_policy():
    ids, types, mask = build_pair([7, 8, 9], [11, 12], 10, cls_id=1, sep_id=2, pad_id=0)
    assert ids.tolist() == [1, 7, 8, 9, 2, 11, 12, 2, 0, 0]
    assert types.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]
    assert mask.tolist() == [1] * 8 + [0, 0]
    # Too long: the longer segment loses tokens from its end first, B on ties.
    ids, _, _ = build_pair(list(range(10, 20)), [30, 31, 32], 10, cls_id=1, sep_id=2, pad_id=0)
    assert ids.tolist() == [1, 10, 11, 12, 13, 2, 30, 31, 32, 2]
    ids, _, _ = build_pair([10, 11, 12, 13], [30, 31, 32, 33], 9, cls_id=1, sep_id=2, pad_id=0)
    assert ids.tolist() == [1, 10, 11, 12, 2, 30, 31, 32, 2]
    with pytest.raises(ValueError, match="over max_len=10; truncate it"):
        build_pair(list(range(10, 20)), [30], 10, cls_id=1, sep_id=2, pad_id=0, truncate=False)


@pytest.mark.parametrize("objective", ["nsp", "sop"])
def test_pairs_are_balanced_and_labelled_as_transformers_expects(objective):
    docs = synthetic_docs()
    pairs = make_pairs(docs, 48, objective, np.random.default_rng(0))
    labels = np.array([p[2] for p in pairs])
    assert 0.4 < labels.mean() < 0.6
    for a, b, label in pairs:
        consecutive = (b[0] - a[-1]) % 90 == 1
        if objective == "sop":  # always consecutive sentences; label 1 means swapped
            assert consecutive == (label == 0) or (label == 1 and (a[0] - b[-1]) % 90 == 1)
        elif label == 0:  # NSP: 0 means B really follows A
            assert consecutive


def test_masking_statistics_over_many_batches():
    encoder = PairEncoder(SPECIALS, max_len=64)
    batches = SentencePairBatches(synthetic_docs(200), encoder, batch_size=32, objective="nsp", seed=1)
    selected = masked = randomised = kept = real = 0
    for _ in range(20):
        b = next(batches)
        special = (b["mlm_labels"] == SPECIALS["cls"]) | (b["mlm_labels"] == SPECIALS["sep"]) | (b["attention_mask"] == 0)
        w = b["mlm_weights"] > 0
        assert not (w & special).any(), "special tokens or padding were selected"
        assert (b["input_ids"][~w] == b["mlm_labels"][~w]).all(), "an unselected token was changed"
        real += (~special).sum()
        selected += w.sum()
        masked += (b["input_ids"][w] == SPECIALS["mask"]).sum()
        kept += (b["input_ids"][w] == b["mlm_labels"][w]).sum()
        randomised += ((b["input_ids"][w] != SPECIALS["mask"]) & (b["input_ids"][w] != b["mlm_labels"][w])).sum()
    assert selected / real == pytest.approx(0.15, abs=0.01)
    assert masked / selected == pytest.approx(0.8, abs=0.02)
    # A random replacement can draw the original token (1 in 96 here), which then counts as kept.
    assert randomised / selected == pytest.approx(0.1 * 95 / 96, abs=0.015)
    assert kept / selected == pytest.approx(0.1 + 0.1 / 96, abs=0.015)


def test_whole_word_and_ngram_masking_select_whole_words():
    rng = np.random.default_rng(0)
    ids = np.arange(10, 74)
    starts = np.zeros(64, bool)
    starts[::4] = True  # words of four tokens
    for max_ngram in (1, 3):
        for _ in range(50):
            _, _, w = mask_tokens(ids, np.ones(64, bool), rng, mask_id=3, random_ids=np.arange(4, 100),
                                  word_starts=starts, max_ngram=max_ngram)
            words = w.reshape(16, 4)
            assert ((words.sum(1) == 0) | (words.sum(1) == 4)).all()
            assert w.sum() == 8  # round(64 * 0.15) = 10 is not a multiple of 4: whole words stop at 8
    spans = []
    for _ in range(300):
        _, _, w = mask_tokens(ids, np.ones(64, bool), rng, mask_id=3, random_ids=np.arange(4, 100), rate=0.3,
                              word_starts=starts, max_ngram=3)
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], w, [0]]))))[::2] // 4
        spans += runs.tolist()
    assert max(spans) >= 3  # n-grams of several words occur


def test_masking_rate_must_lie_in_the_open_unit_interval():
    for rate in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
            PairEncoder(SPECIALS, max_len=32, rate=rate)


def test_resume_and_hosts_see_the_same_batches():
    docs, encoder = synthetic_docs(60), PairEncoder(SPECIALS, max_len=32)
    stream = SentencePairBatches(docs, encoder, batch_size=4, objective="sop", seed=3)
    first = [next(stream) for _ in range(stream.batches_per_epoch + 3)]
    resumed = SentencePairBatches(docs, encoder, batch_size=4, objective="sop", seed=3)
    for _ in range(5):
        next(resumed)
    state = resumed.state()
    again = SentencePairBatches(docs, encoder, batch_size=4, objective="sop", seed=3)
    again.restore(state)
    for expected in first[5:]:
        got = next(again)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    hosts = [SentencePairBatches(docs, encoder, batch_size=2, objective="sop", seed=3, process_index=i,
                                 process_count=2) for i in range(2)]
    for expected in first[:3]:
        parts = [next(h) for h in hosts]
        for key in expected:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])
    with pytest.raises(ValueError, match="objective"):
        SentencePairBatches(docs, encoder, batch_size=4, objective="nsp", seed=3).restore(state)


def test_eval_pass_covers_every_pair_once():
    docs, encoder = synthetic_docs(30), PairEncoder(SPECIALS, max_len=32)
    n_pairs = len(make_pairs(docs, 32, "nsp", np.random.default_rng((0, 0))))
    batches = list(sentence_pairs.eval_pair_batches(docs, encoder, batch_size=8, objective="nsp"))
    assert sum(b["pair_weights"].sum() for b in batches) == n_pairs
    assert len(batches) == -(-n_pairs // 8)


@pytest.mark.slow
@pytest.mark.parametrize("model,task", [("bert-tiny", "mlm_nsp"), ("albert-tiny", "mlm_sop")])
def test_encoders_pretrain_and_evaluate_in_the_main_loop(corpus, tmp_path, model, task):
    from train.evaluation import evaluate_checkpoint
    from train.loop import train

    root, _ = corpus
    config = tiny_config(corpus, tmp_path / "run", **{
        "model": model, "model.vocab_size": 120, "model.n_positions": 32, "task.name": task, "steps": 4,
        "log.eval_every": 4, "task.whole_word_masking": True, "task.max_ngram": 3 if task == "mlm_sop" else 1})
    summary = train(config)
    objective = task.split("_")[1]
    assert {"mlm_accuracy", f"{objective}_accuracy", "mlm_loss"} <= set(summary["validation"])
    result = evaluate_checkpoint(tmp_path / "run", str(root / "validation.jsonl"))
    assert result["pairs"] > 0 and result["tokens"] > 0
    assert result[f"{objective}_loss"] == pytest.approx(summary["validation"][f"{objective}_loss"], rel=1e-5)


def test_masked_lm_alone_is_the_mlm_part_of_the_pair_objective(corpus, tmp_path):
    """Task ``mlm`` (the NSP ablation): the same pair batches, the loss without the NSP term."""
    import jax

    import models
    from train.data.tokenizers import load_tokenizer
    from train.task_registry import make_task

    config = tiny_config(corpus, tmp_path, **{"model": "bert-tiny", "model.vocab_size": 120, "model.n_positions": 32,
                                              "task.name": "mlm_nsp"})
    tokenizer = load_tokenizer(config.data.tokenizer)
    pair_task = make_task(config, tokenizer, "spm")
    mlm_task = make_task(config.replace({"task.name": "mlm"}), tokenizer, "spm")
    docs = pair_task.load_corpus(config.data.train, "train")
    batch = next(pair_task.train_batches(docs, 4, 0, 1))
    assert all(np.array_equal(batch[k], v) for k, v in next(mlm_task.train_batches(docs, 4, 0, 1)).items())
    module = models.create(config.model)[0]
    variables = {"params": models.init_params(module, jax.random.PRNGKey(0))}
    rng = jax.random.PRNGKey(1)
    pair_loss, (pair_sums, _) = pair_task.loss(module, variables, batch, rng, True)
    mlm_loss, (mlm_sums, _) = mlm_task.loss(module, variables, batch, rng, True)
    nsp = pair_sums["pair_nll"] / pair_sums["pair_weight"]
    np.testing.assert_allclose(mlm_loss, pair_loss - nsp, rtol=1e-6)
    assert set(mlm_task.summarize(mlm_sums)) == {"loss", "mlm_loss", "mlm_accuracy", "tokens"}

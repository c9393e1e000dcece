"""lm-evaluation-harness (``train.harness``, ``jaxlm harness``): on one tiny GPT-2 exported to a
Hugging Face folder, our ``jaxlm`` model class scores the local tasks of tests/data/lm_eval (a
multiple-choice task and a perplexity task, JSON Lines files, no hub) as the harness's own ``hf``
class does; generation decodes as models.generation.sample and stops at ``until``."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import jaxlm

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import models  # noqa: E402
from models.generation import sample  # noqa: E402
from train.checkpoint import save_params  # noqa: E402
from train.data.tokenizers import SentencePieceTokenizer, train_sentencepiece  # noqa: E402
from train.export import to_hf  # noqa: E402
from train.harness import JaxLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "lm_eval"


def task_texts() -> list[str]:
    """The two tasks' questions with their choices, and their passages."""
    texts = []
    for line in (TASKS / "sotu_mc.jsonl").read_text().splitlines():
        doc = json.loads(line)
        texts.append(f"Question: {doc['question']}\nAnswer: " + " ".join(doc["choices"]))
    return texts + [json.loads(line)["text"] for line in (TASKS / "sotu_ppl.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A gpt2-tiny run (64-token context, 256 ids) with a 240-piece tokenizer trained on the tasks'
    text (so no character is unknown), its weights scaled up so that its predictions are far from
    uniform; its Hugging Face export; the tokenizer."""
    root = tmp_path_factory.mktemp("harness")
    spm = train_sentencepiece(iter(task_texts()), root / "spm", vocab_size=240, model_type="bpe")
    module, config = models.create("gpt2-tiny")
    params = jax.tree.map(lambda x: 4 * x, models.init_params(module, jax.random.key(0)))
    run = save_params(root / "run", config, params, {"data.tokenizer": str(spm), "task.name": "lm"})
    to_hf(run, root / "hf")
    return run, root / "hf", SentencePieceTokenizer(spm)


@pytest.fixture(scope="module")
def task_requests():
    """The two tasks' requests, read from their JSON Lines files (the paths are the repository root's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        tasks = TaskManager(include_path=str(TASKS)).load(["sotu_mc", "sotu_ppl"])["tasks"]
        for task in tasks.values():
            task.build_all_requests(rank=0, world_size=1)
    return {name: task.instances for name, task in tasks.items()}


def greedy_requests(module, params, tok, contexts: list[str]) -> list[Instance]:
    """Loglikelihood requests whose continuations are the model's three greedy tokens after each context."""
    out = []
    for i, context in enumerate(contexts):
        ids = tok.encode(context)
        new = sample(module, params, [ids], 3, temperature=0).ids[0]
        out.append(Instance("loglikelihood", {}, (context, tok.decode(ids + new)[len(tok.decode(ids)):]), i))
    return out


def test_loglikelihoods_equal_the_harness_hf_class(folders, task_requests):
    """Per request, our class on the run folder and on the HF folder gives HFLM's log-likelihoods
    to 1e-4 and the same is_greedy: multiple choice (one context longer than the 64-token window,
    truncated from the left; two continuations that are the model's greedy ones) and rolling
    perplexity over several windows."""
    from lm_eval.models.huggingface import HFLM

    run, hf, tok = folders
    theirs = HFLM(pretrained=str(hf), device="cpu", dtype="float32", batch_size=4)
    on_run = JaxLM(str(run), batch_size=4)
    contexts = ["Fellow-citizens, we cannot escape", "To be prepared for war is"]
    greedy = greedy_requests(on_run.module, on_run.params, tok, contexts)
    mc, ppl = task_requests["sotu_mc"] + greedy, task_requests["sotu_ppl"]
    assert max(len(theirs.tok_encode(r.args[0])) for r in mc) > theirs.max_length == 64
    assert max(len(theirs.tok_encode(r.args[0])) for r in ppl) > 64
    expected_mc, expected_ppl = theirs.loglikelihood(mc), theirs.loglikelihood_rolling(ppl)
    for ours in (on_run, JaxLM(str(hf), batch_size=4)):
        got_mc = ours.loglikelihood(mc)
        np.testing.assert_allclose([g for g, _ in got_mc], [e for e, _ in expected_mc], rtol=0, atol=1e-4)
        assert [g for _, g in got_mc] == [e for _, e in expected_mc]
        assert [g for _, g in got_mc[-2:]] == [True, True]
        np.testing.assert_allclose(ours.loglikelihood_rolling(ppl), expected_ppl, rtol=0, atol=1e-4)


def test_generate_until_stops_at_until_and_decodes_greedily(folders):
    """A greedy continuation equals models.generation.sample's, cut before the first ``until``
    string; a prompt longer than the room left by max_gen_toks keeps its last tokens."""
    run, _, tok = folders
    ours = JaxLM(str(run), batch_size=2)
    prompts = ["Question: Who gave the first annual message", "freedom " * 40]
    ids = [tok.encode(prompts[0]), tok.encode(prompts[1])[-52:]]
    full = [tok.decode(row) for row in sample(ours.module, ours.params, ids, 12, temperature=0, eos_id=tok.eos_id,
                                              vocab_size=tok.vocab_size).ids]
    stop = full[0].strip()[2:4]
    assert stop and stop in full[0]
    options = {"until": [stop], "max_gen_toks": 12, "do_sample": False}
    got = ours.generate_until([Instance("generate_until", {}, (p, options), i) for i, p in enumerate(prompts)])
    assert got == [full[0].split(stop)[0], full[1].split(stop)[0]]
    assert stop not in got[0]


def test_simple_evaluate_and_the_command(folders, tmp_path, capsys, monkeypatch):
    """The registered ``jaxlm`` model runs both tasks through lm_eval.simple_evaluate; ``jaxlm
    harness`` prints the table and writes the results' JSON."""
    run, _, _ = folders
    monkeypatch.chdir(ROOT)
    results = lm_eval.simple_evaluate(model="jaxlm", model_args={"pretrained": str(run)}, batch_size=4,
                                      tasks=["sotu_mc", "sotu_ppl"], task_manager=TaskManager(include_path=str(TASKS)))
    assert 0 <= results["results"]["sotu_mc"]["acc,none"] <= 1
    assert results["results"]["sotu_ppl"]["word_perplexity,none"] > 1
    out = tmp_path / "results.json"
    jaxlm("harness", run, "--tasks", "sotu_mc", "--include-path", TASKS, "--limit", 2, "--out", out)
    assert "sotu_mc" in capsys.readouterr().out
    assert '"sotu_mc"' in out.read_text()


def test_an_encoder_is_refused(tmp_path, capsys):
    """A BERT run folder: one line saying the harness needs a GPT/GPT-2 language model."""
    module, config = models.create("bert-tiny", vocab_size=256, n_positions=32)
    save_params(tmp_path / "bert", config, models.init_params(module, jax.random.key(0)))
    with pytest.raises(ValueError, match="holds a BertConfig, but the harness scores text with a GPT/GPT-2"):
        JaxLM(str(tmp_path / "bert"))
    with pytest.raises(SystemExit) as exit_:
        jaxlm("harness", tmp_path / "bert", "--tasks", "sotu_mc", "--include-path", TASKS)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds a BertConfig" in err


def test_the_command_without_lm_eval_names_the_extra(folders, capsys, monkeypatch):
    """Without lm-eval installed, jaxlm harness says which extra installs it, in one line."""
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(SystemExit) as exit_:
        jaxlm("harness", folders[0], "--tasks", "sotu_mc")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: jaxlm harness needs lm-evaluation-harness: pip install -e .[eval]\n"

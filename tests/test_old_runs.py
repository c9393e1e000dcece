"""Run folders written before the shared shape vocabulary still load.

``tests/data/v1`` holds run folders that the code of commit b675acb wrote (BERT's and ALBERT's
configs in Hugging Face's names, GPT's ``embd_dropout``): a parameters-only BERT folder with the
MLM logits it gave then, and the run.json of an ALBERT and a GPT-2 run. Their run.json also
predates the nested run config: a flat ``run`` section (``train.config.FLAT_FIELDS``).
"""

import json
import shutil
from pathlib import Path

import numpy as np

from train.checkpoint import Checkpoints, load_params, read_model_config, read_run_config
from train.config import config_from_record

V1 = Path(__file__).parent / "data" / "v1"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_old_bert_folder_loads_with_todays_names_and_computes_the_same():
    folder = V1 / "bert-v1"
    before = _snapshot(folder)
    module, config, params, _ = load_params(folder)
    assert (config.vocab_size, config.n_positions, config.d_model, config.n_layer, config.n_head, config.d_ff) == (
        64, 16, 16, 2, 2, 32)
    # BERT's one hidden dropout rate served the embeddings and the residual branches.
    assert config.embed_dropout == config.resid_dropout == 0.05 and config.attn_dropout == 0.1
    logits = module.apply({"params": params}, np.array([[5, 6, 7, 8, 9, 10]]))["mlm_logits"]
    np.testing.assert_allclose(np.asarray(logits), np.load(folder / "mlm_logits.npy"), atol=1e-6, rtol=0)
    assert _snapshot(folder) == before  # an input: read, never written


def test_old_albert_and_gpt_configs_load_with_todays_names():
    albert, _ = read_model_config(V1 / "albert-tiny-v1")
    assert (albert.d_model, albert.d_embed, albert.n_groups, albert.layers_per_group, albert.n_head, albert.d_ff) == (
        64, 32, 2, 1, 2, 128)
    gpt, _ = read_model_config(V1 / "gpt2-tiny-v1")
    assert (gpt.n_positions, gpt.embed_dropout, gpt.attn_dropout) == (32, 0.0, 0.1)


def test_old_flat_run_config_reads_into_todays_nested_config():
    config = read_run_config(V1 / "gpt2-tiny-v1")
    assert (config.optimizer.schedule, config.optimizer.pruning.end_step, config.data.seq_len) == ("stlr", 4, 32)
    assert (config.optimizer.discriminative_factor, config.optimizer.unfreeze_every, config.task.name) == (2.6, 2, "lm")
    assert (config.data.train, config.data.tokenizer, config.model.n_positions) == ("t.jsonl", "spm.model", 32)
    assert config.task.classifier is None and config.task.distill is None  # the old empty sections
    assert read_run_config(V1 / "bert-v1").task.name == "mlm_nsp"


def test_an_old_run_folder_is_claimed_by_its_equivalent_new_config(tmp_path):
    """Resuming an old run with the same settings in today's form: no "different config" refusal;
    run.json is rewritten in today's form with the same settings."""
    folder = tmp_path / "run"
    shutil.copytree(V1 / "gpt2-tiny-v1", folder)
    model_config, record = read_model_config(folder)
    config = config_from_record(record).replace({"run_dir": str(folder)})
    checkpoints = Checkpoints(folder, config, model_config, keep=1, async_save=False)
    checkpoints.close()
    assert checkpoints.previous.identity() == config.identity()
    assert read_run_config(folder) == config and "config" in json.loads((folder / "run.json").read_text())

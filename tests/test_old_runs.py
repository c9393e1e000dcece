"""Run folders written before the shared shape vocabulary still load.

``tests/data/v1`` holds run folders that the code of commit b675acb wrote (BERT's and ALBERT's
configs in Hugging Face's names, GPT's ``embd_dropout``): a parameters-only BERT folder with the
MLM logits it gave then, and the run.json of an ALBERT and a GPT-2 run.
"""

from pathlib import Path

import numpy as np

from train.checkpoint import load_params, read_model_config

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

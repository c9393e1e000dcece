"""The PyTorch reference contenders: transformers' ``GPT2LMHeadModel`` (eager, its default
attention) trained with ``torch.optim.AdamW``, ``clip_grad_norm_`` and ``model.train()``, on the
CPU; and, for inference, its ``generate`` and ``BertModel``'s forward pass.

It runs in a subprocess of the main environment (``bench.workers``), so its memory is measured
alone, and uses only numpy, torch and transformers, never our packages.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import transformers

from bench.measure import (
    Contender,
    HostMemory,
    Workloads,
    cpu_count,
    torch_matmul_flops,
    versions,
)
from bench.spec import EPS, BenchSpec, random_tokens, warmup_cosine_fn


def torch_reference_step(spec: BenchSpec, hf_config: dict, optimizer: dict, threads: int | None = None,
                         adamw_impl: str = "fused") -> Contender:
    """transformers' PyTorch ``GPT2LMHeadModel`` with ``torch.optim.AdamW`` (eager, CPU)."""
    transformers.logging.set_verbosity_error()
    memory = HostMemory()
    memory.start()
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec.dtype]
    cfg = transformers.GPT2Config(**hf_config)
    t0 = time.perf_counter()
    model = transformers.GPT2LMHeadModel(cfg).to(dtype)
    model.train()  # dropout active exactly when its rates are non-zero (spec.dropout)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # lm_head.weight is wte.weight: listed once
        (decay if p.dim() == 2 and "wte" not in name and "wpe" not in name else no_decay).append(p)
    kwargs = {"fused": True} if adamw_impl == "fused" else {"foreach": adamw_impl == "foreach"}
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optimizer["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optimizer["learning_rate"], betas=(optimizer["b1"], optimizer["b2"]), eps=EPS, **kwargs,
    )
    schedule = warmup_cosine_fn(optimizer, spec.total_steps)
    lr_at = [float(schedule(i)) for i in range(spec.warmup + spec.steps + 1)]
    init_s = time.perf_counter() - t0
    inputs, targets = (torch.from_numpy(x).long() for x in random_tokens(spec, cfg.vocab_size))
    holder = {"i": 0}

    def call():
        for group in opt.param_groups:
            group["lr"] = lr_at[holder["i"]]
        holder["i"] += 1
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optimizer["clip_norm"])
        opt.step()
        holder["loss"] = loss.detach()

    t0 = time.perf_counter()
    call()  # eager: the first step allocates optimizer state and warms the kernels
    first_step_s = time.perf_counter() - t0

    def describe():
        return {
            "implementation": f"transformers {transformers.__version__} GPT2LMHeadModel "
                              f"(attn_implementation={model.config._attn_implementation}), eager, "
                              f"torch.optim.AdamW({adamw_impl}), clip_grad_norm_",
            "versions": versions("torch", "transformers", "numpy"),
            "threads": torch.get_num_threads(),
            "init_s": init_s,
            "compile_s": None,
            "first_step_s": first_step_s,
            "last_loss": float(holder["loss"]),
            "torch_matmul_flops_per_s": torch_matmul_flops(),
        }

    return Contender(call, describe, memory, max(spec.warmup - 1, 0))


def torch_inference(payload: dict) -> Workloads:
    """transformers' PyTorch ``GPT2LMHeadModel.generate`` (greedy, with its KV cache, exactly
    ``new_tokens`` new tokens per row) at each batch size, and ``BertModel`` over the encoder batch
    (``payload["encoder"]``: the checkpoint folder and the token batch), eval mode, ``no_grad``."""
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(payload.get("threads") or cpu_count())
    torch.manual_seed(payload["seed"])
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**payload["hf_config"])).eval()
    prompts = torch.tensor(payload["prompts"])
    new = payload["new_tokens"]

    def decode(batch: int):
        ids = prompts[:batch]

        def call():
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, use_cache=True, pad_token_id=0)
        return call

    calls = {f"decode_b{b}": decode(b) for b in payload["batch_sizes"]}
    encoder = payload.get("encoder")
    if encoder:
        bert = transformers.BertModel.from_pretrained(encoder["folder"]).eval()
        ids, mask = torch.tensor(encoder["ids"]), torch.tensor(encoder["mask"])

        def encode():
            with torch.no_grad():
                bert(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()
        calls["encode"] = encode

    def describe():
        return {
            "implementation": f"transformers {transformers.__version__} GPT2LMHeadModel.generate (greedy, "
                              f"use_cache=True, attn_implementation={model.config._attn_implementation})"
                              + (", BertModel forward" if encoder else "") + ", eval, no_grad",
            "versions": versions("torch", "transformers", "numpy"),
            "threads": torch.get_num_threads(),
        }

    return Workloads(calls, describe, payload.get("warmup", 1))

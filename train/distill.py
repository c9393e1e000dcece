"""Knowledge distillation (Hinton et al. 2015): the ``distill`` task.

A student is trained on the objective its teacher was trained on (``lm`` for GPT, ``mlm_nsp`` /
``mlm_sop`` for BERT and ALBERT, ``classify`` for a fine-tuned classifier: the teacher run's task,
or the family's), on the same batches, with the loss

    alpha * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T)) + (1 - alpha) * CE(labels, z_student)

for every output that objective scores (the next token; the masked tokens and the sentence-pair
head; the class logits), each averaged over the positions or examples the objective weighs. The
T^2 keeps the soft targets' gradients on the same scale as the hard labels' whatever the
temperature. The teacher is loaded from a run folder or a Hugging Face folder and never trained
(applied deterministically: no dropout, a classifier head's running batch statistics); the train
step receives its variables as an argument (``frozen``), so they are neither compiled into the
step nor saved in the student's checkpoints. Metrics are the objective's own (the student's
loss, perplexity, accuracies, macro-F1) plus each output's KL at temperature T and the
distillation loss.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from models.classifier import ClassifierConfig
from train.checkpoint import load_variables_for_eval, read_run_config
from train.config import TrainConfig
from train.step import variables_sharding
from train.tasks import DEFAULT_TASKS, TASKS, apply_model, classification_sums, cross_entropy_sums

DECODERS, ENCODERS = {"gpt"}, {"bert", "albert"}
BASES = ("lm", "mlm_nsp", "mlm_sop", "classify")


def outputs(task_name: str, module, variables, batch, rng, deterministic: bool):
    """What an objective scores, ``{output: (logits, labels, weights)}``, and the model state after
    the batch (``tasks.apply_model``); the sums' key prefix is the output's name (none for the
    language model's and the classifier's)."""
    if task_name == "lm":
        logits, state = apply_model(module, variables, batch["inputs"], rng=rng, deterministic=deterministic)
        weights = batch.get("weights", jnp.ones(batch["targets"].shape, jnp.float32))
        return {"": (logits, batch["targets"], weights)}, state
    if task_name == "classify":
        logits, state = apply_model(module, variables, batch["input_ids"], batch["attention_mask"], rng=rng,
                                    deterministic=deterministic)
        return {"": (logits, batch["labels"], batch["weights"])}, state
    objective = task_name.removeprefix("mlm_")
    out, state = apply_model(module, variables, batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch["token_type_ids"], rng=rng, deterministic=deterministic)
    if "mlm_logits" not in out or f"{objective}_logits" not in out:
        raise ValueError(f"distilling {task_name} needs models with MLM and {objective.upper()} heads; "
                         f"this one gives {sorted(out)}")
    return {"mlm_": (out["mlm_logits"], batch["mlm_labels"], batch["mlm_weights"]),
            "pair_": (out[f"{objective}_logits"], batch["pair_labels"], batch["pair_weights"])}, state


def soft_kl(student_logits, teacher_logits, temperature: float):
    """KL(teacher || student) of the temperature-softened distributions, per position, in fp32."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(t) * (t - s), axis=-1)


class Distillation:
    """The ``distill`` task: the teacher's objective (``self.base``) for data and metrics, the
    distillation loss for training."""

    name = "distill"

    def __init__(self, config, tokenizer, tokenizer_key: str):
        self.spec = config.task.distill
        teacher_module, teacher_config, teacher_variables, source = load_variables_for_eval(self.spec.teacher)
        student = config.model  # a classifier student's body: the task wraps it (model_config)
        is_classifier = isinstance(teacher_config, ClassifierConfig)
        teacher_body = teacher_config.body if is_classifier else teacher_config
        if teacher_body.vocab_size != student.vocab_size:
            raise ValueError(
                f"the student's vocabulary ({student.vocab_size} tokens) differs from its teacher's "
                f"({teacher_body.vocab_size}, {self.spec.teacher}): soft targets are distributions over the same "
                f"tokens. Set model.vocab_size={teacher_body.vocab_size} and train with the teacher's "
                f"tokenizer{' (' + source.tokenizer + ')' if source.tokenizer else ''}"
            )
        if source.tokenizer and source.tokenizer != config.data.tokenizer:
            raise ValueError(f"the student's tokenizer {config.data.tokenizer} is not its teacher's "
                             f"({source.tokenizer}): the token ids would mean different things; use the teacher's "
                             "tokenizer")
        kinds = [DECODERS if c.family in DECODERS else ENCODERS for c in (student, teacher_body)]
        if kinds[0] is not kinds[1]:
            raise ValueError(f"a {student.family} student cannot learn from a {teacher_body.family} teacher: "
                             "distil a decoder into a decoder, an encoder into an encoder")
        task = self.spec.task or (source.task if source.task != "distill" else None)
        self.base_name = task or DEFAULT_TASKS[teacher_config.family]
        if self.base_name not in BASES:
            raise ValueError(f"task.distill.task={self.base_name!r}: distillation supports {', '.join(BASES)}")
        if self.base_name == "classify" and not is_classifier:
            raise ValueError(f"task.distill.task='classify' needs a classifier teacher, but {self.spec.teacher} holds a "
                             f"{type(teacher_config).__name__}: give a run of task classify (e.g. jaxlm finetune's "
                             f"3-classifier), or distil this teacher's own task ({DEFAULT_TASKS[teacher_config.family]})")
        if is_classifier and self.base_name != "classify":
            raise ValueError(f"{self.spec.teacher} is a classifier: its outputs are class logits, so task.distill.task must "
                             f"be 'classify', not {self.base_name!r}")
        if self.base_name != "classify" and config.task.classifier is not None:
            raise ValueError(f"task.classifier applies to a classifier student, whose teacher is a classifier; "
                             f"{self.spec.teacher}'s task is {self.base_name}: drop it")
        if self.base_name != "classify" and (self.base_name == "lm") != (student.family in DECODERS):
            raise ValueError(f"task.distill.task={self.base_name!r} does not fit a {student.family} student: lm is for "
                             "decoders (GPT), mlm_nsp and mlm_sop for encoders (BERT, ALBERT)")
        base = {"task.name": self.base_name, "task.distill": None}
        if self.base_name == "classify" and config.task.classifier is None:
            base["task.classifier"] = {}
        self.base = TASKS[self.base_name](config.replace(base), tokenizer, tokenizer_key)
        self.teacher_module, self.teacher_variables = teacher_module, teacher_variables
        self.teacher_labels = teacher_config.labels if is_classifier else None
        self.config = config

    def load_corpus(self, source, split: str):
        return self.base.load_corpus(source, split)

    def train_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        return self.base.train_batches(corpus, per_host_batch, process_index, process_count)

    def eval_batches(self, corpus, per_host_batch: int, process_index: int, process_count: int):
        return self.base.eval_batches(corpus, per_host_batch, process_index, process_count)

    @property
    def labels(self):
        """A classifier student's class names (the base task's), which evaluation sets to the checkpoint's."""
        return self.base.labels

    @labels.setter
    def labels(self, labels):
        self.base.labels = labels

    def frozen(self, mesh):
        """The teacher's variables on ``mesh`` (parameters laid out by their logical axes, the model
        state replicated): an argument of the steps."""
        return jax.device_put(self.teacher_variables,
                              variables_sharding(self.teacher_module, self.teacher_variables, mesh))

    def model_config(self, model_config):
        """The base task's model (a classifier gets its classes from the training data), whose
        classes must be the teacher's: soft targets are distributions over the same classes."""
        student = self.base.model_config(model_config)
        if self.teacher_labels is not None and student.labels != self.teacher_labels:
            raise ValueError(
                f"the student's classes {list(student.labels)} (column {self.config.data.label_field!r} of "
                f"{self.config.data.train}) are not its teacher's {list(self.teacher_labels)}: soft targets are "
                "distributions over the same classes; train the student on data labelled like the teacher's"
            )
        return student

    def loss(self, module, variables, batch, rng, deterministic: bool, frozen=None):
        """The distillation loss and ``(sums, model_state)``: the student's state after the batch
        (a classifier head's batch statistics in training; ``{}`` for language models)."""
        if frozen is None:
            raise ValueError("the distill task's loss needs the teacher's variables (frozen=task.frozen(mesh))")
        student, state = outputs(self.base_name, module, variables, batch, rng, deterministic)
        teacher, _ = outputs(self.base_name, self.teacher_module, frozen, batch, rng, True)
        temperature, alpha = self.spec.temperature, self.spec.alpha
        sums, hard, soft = {}, 0.0, 0.0
        for prefix, (logits, labels, weights) in student.items():
            if self.base_name == "classify":
                s = classification_sums(logits, batch)
            else:
                s = cross_entropy_sums(logits, labels, weights)
            kl = jnp.sum(soft_kl(logits, teacher[prefix][0], temperature) * weights)
            sums.update({prefix + k: v for k, v in s.items()}, **{f"{prefix}soft_kl": kl})
            hard += s["nll"] / jnp.maximum(s["weight"], 1.0)
            soft += kl / jnp.maximum(s["weight"], 1.0)
        return alpha * temperature**2 * soft + (1.0 - alpha) * hard, (sums, state)

    def summarize(self, sums) -> dict:
        prefixes = [k.removesuffix("soft_kl") for k in sums if k.endswith("soft_kl")]
        metrics = self.base.summarize({k: v for k, v in sums.items() if not k.endswith("soft_kl")})
        t, alpha = self.spec.temperature, self.spec.alpha
        soft = 0.0
        for prefix in prefixes:
            kl = float(sums[prefix + "soft_kl"]) / max(float(sums[prefix + "weight"]), 1.0)
            metrics[f"{prefix}soft_kl"] = kl
            soft += kl
        metrics["distill_loss"] = alpha * t**2 * soft + (1 - alpha) * metrics["loss"]
        return metrics



def student_config(teacher: str, base: TrainConfig | None = None) -> TrainConfig:
    """A student's run config: ``base``, else the teacher run's own (its model, data with the
    validation split, steps, optimizer and classifier, but not its ``init_from``), with the
    task ``distill`` from ``teacher`` and the run folder ``TEACHER-student``."""
    if base is None:
        if not (Path(teacher) / "run.json").exists():
            raise ValueError(f"{teacher} is not a run folder of ours (no run.json): pass --config for the student's run")
        base = read_run_config(teacher)
    changes = {"task.name": "distill", "task.distill": {"teacher": str(teacher)}, "init_from": None,
               "run_dir": f"{str(teacher).rstrip('/')}-student"}
    return base.replace(changes)

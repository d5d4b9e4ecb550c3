"""Causal-LM task: a chat prompt + the label's answer text; loss on the answer tokens only.

Each example becomes the chat-formatted prompt (research/data/prompts.py: system + user, k = 0)
followed by its label string and the template's end-of-turn text. The loss is next-token
cross-entropy on the answer tokens (prompt and padding masked). Evaluation is label scoring: every
label string is scored as a continuation of the prompt (summed log-prob of its tokens) and the
argmax is the prediction, so accuracy and macro-F1 read like a classifier's. Generation accuracy
(greedy answers parsed to labels) is research/zero_shot.py's, on the exported params.

Rows reuse the classification pipeline's batching (research/data/pipeline.py): the answer mask
travels in the pipeline's second per-token slot and is renamed `loss_mask` here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research import losses
from research import metrics as metrics_lib
from research import zero_shot
from research.data import pipeline
from research.data import prompts
from research.tasks.base import Apply, Distillation, LossFn, PredictFn

METRICS = ("accuracy", "macro_f1")


def num_outputs(config: Any) -> int:
  del config
  return 0  # the decoder's vocabulary is its output; no head is added


def load_tokenizer(config: Any) -> Any:
  """The model source's GGUF tokenizer (tests replace this)."""
  from research.checkpoints import gguf, gguf_tokenizer  # pylint: disable=g-import-not-at-top
  return gguf_tokenizer.load_tokenizer(gguf.resolve_gguf(config.model.source))


def prompt_task(config: Any) -> prompts.PromptTask:
  """data.prompt_task, or the prompt task of (data.name, data.config)."""
  d = config.data
  if d.prompt_task:
    return prompts.get_task(d.prompt_task)
  for name in prompts.TASK_NAMES:
    t = prompts.get_task(name, label_names=("x", "y"))  # label names do not matter here
    if (t.dataset, t.config or "") == (d.name, d.config or ""):
      return prompts.get_task(name)
  raise ValueError(f"no prompt task for data {d.name}/{d.config}; set --config.data.prompt_task "
                   f"to one of {list(prompts.TASK_NAMES)}.")


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Tokenized prompt + option rows of one split (a TokenizedSplit) and what each row is."""
  tokens: pipeline.TokenizedSplit      # token_type_ids slot = answer mask
  example: np.ndarray                  # row -> example position in the split
  option: np.ndarray                   # row -> label index it scores
  labels: np.ndarray                   # example -> gold label


def _rows(tok, task: prompts.PromptTask, examples: Sequence[dict], *, max_length: int,
          context_words: int, all_options: bool) -> _Rows:
  ids, masks, ex_of, opt_of = [], [], [], []
  for e, example in enumerate(examples):
    messages = prompts.build_messages(task, example, context_words=context_words)
    prompt_text = tok.apply_chat_template(messages, add_generation_prompt=True)
    prompt_ids = tok.encode(prompt_text)
    suffix = zero_shot.answer_suffix(tok, messages)
    options = zero_shot.option_token_ids(tok, prompt_text, prompt_ids, task.label_strings,
                                         suffix)
    for o in (range(len(options)) if all_options else (int(example["label"]),)):
      ids.append(list(prompt_ids) + list(options[o]))
      masks.append([0] * len(prompt_ids) + [1] * len(options[o]))
      ex_of.append(e)
      opt_of.append(o)
  longest = max(len(r) for r in ids)
  if longest > max_length:
    over = sum(len(r) > max_length for r in ids)
    raise ValueError(f"{over} of {len(ids)} {task.name} rows are longer than data.max_length="
                     f"{max_length} tokens (longest {longest}); raise --config.data.max_length or "
                     "lower --config.data.context_words.")
  n = len(ids)
  pad = tok.pad_id if tok.pad_id is not None else 0
  input_ids = np.full((n, max_length), pad, np.int32)
  mask = np.zeros((n, max_length), np.int32)
  for i, (r, m) in enumerate(zip(ids, masks)):
    input_ids[i, :len(r)], mask[i, :len(m)] = r, m
  labels = np.asarray([int(x["label"]) for x in examples], np.int32)
  split = pipeline.TokenizedSplit(
      input_ids=input_ids, token_type_ids=mask, lengths=np.asarray([len(r) for r in ids], np.int32),
      labels=np.asarray(opt_of, np.int32),
      ids=tuple(f"{examples[e].get('id', e)}#{o}" for e, o in zip(ex_of, opt_of)), pad_id=pad)
  return _Rows(split, np.asarray(ex_of), np.asarray(opt_of), labels)


class _Renamed:
  """Batches with the answer mask under `loss_mask` (the pipeline calls it token_type_ids)."""

  def __init__(self, it):
    self._it = it

  @property
  def position(self):
    return self._it.position

  def __iter__(self):
    return self

  def __next__(self):
    return _rename(next(self._it))


def _rename(batch: dict) -> dict:
  batch = dict(batch)
  batch["loss_mask"] = batch.pop("token_type_ids")
  return batch


def _answer_logprobs(apply: Apply, params, batch, **kw):
  """(log-prob of each next token B×(L-1), answer mask B×(L-1)) with logits in f32."""
  logits_BxLxV = apply(params, batch, **kw)["logits"]
  logp = jax.nn.log_softmax(logits_BxLxV[:, :-1].astype(jnp.float32), axis=-1)
  tok_lp = jnp.take_along_axis(logp, batch["input_ids"][:, 1:, None], axis=-1)[..., 0]
  return tok_lp, batch["loss_mask"][:, 1:].astype(jnp.float32)


class CausalLMTask:
  """See research/tasks/base.py for the protocol."""

  metrics = METRICS

  def __init__(self, rows: Mapping[str, _Rows], *, label_strings: Sequence[str], buckets,
               primary_metric: str = "accuracy", name: str = "causal_lm",
               full_train_size: int | None = None):
    if primary_metric not in METRICS:
      raise ValueError(f"train.best_metric={primary_metric!r}; use one of {METRICS}.")
    self.name, self.primary_metric, self._rows = name, primary_metric, dict(rows)
    self.label_strings, self.buckets = tuple(label_strings), tuple(buckets)
    self.splits = {k: r.tokens for k, r in self._rows.items()}
    self.full_train_size = full_train_size or len(self.splits["train"])

  def train_batches(self, *, batch_size: int, seed: int, epoch: int = 0, step: int = 0):
    return _Renamed(pipeline.TrainIterator(self.splits["train"], batch_size, self.buckets,
                                           seed=seed, epoch=epoch, step=step,
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count()))

  def eval_batches(self, split: str, batch_size: int):
    for b in pipeline.eval_batches(self.splits[split], batch_size, self.buckets, labeled=False,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count()):
      yield _rename(b)

  def batch_width(self, batch) -> int:
    return int(batch["input_ids"].shape[1])

  def loss_fn(self, apply: Apply, *, kd: Distillation | None = None,
              label_smoothing: float = 0.0) -> LossFn:
    if kd is not None:
      raise ValueError("distillation into a decoder is not wired into the causal-LM task yet; "
                       "drop distill.teacher.")
    if label_smoothing:
      raise ValueError("train.label_smoothing is for classifiers; set it to 0 for causal_lm.")

    def loss_fn(params, batch, rng, aux):
      del aux
      tok_lp, mask = _answer_logprobs(apply, params, batch, deterministic=False, rng=rng)
      return losses.token_nll(token_logprobs_BxL=tok_lp,
                              mask_BxL=mask * batch["valid"][:, None])
    return loss_fn

  def predict_fn(self, apply: Apply) -> PredictFn:
    def predict_fn(params, batch, aux):
      del aux
      tok_lp, mask = _answer_logprobs(apply, params, batch, deterministic=True)
      return {"score": jnp.sum(tok_lp * mask, -1), "valid": batch["valid"],
              "index": batch["index"]}
    return predict_fn

  def evaluate(self, predictions: Mapping[str, Any], split: str) -> dict:
    """Label scoring: argmax over each example's option scores (summed answer log-probs)."""
    rows = self._rows[split]
    idx = np.asarray(predictions["index"])
    scores = np.full((len(rows.labels), len(self.label_strings)), -np.inf, np.float32)
    scores[rows.example[idx], rows.option[idx]] = np.asarray(predictions["score"])
    return metrics_lib.classification_metrics(scores, rows.labels,
                                              label_names=self.label_strings)

  def labeled_count(self, split: str = "train") -> int:
    return len(self._rows[split].labels)


def build(config: Any, model_cfg: Any) -> CausalLMTask:
  del model_cfg
  d = config.data
  if d.keep_unlabeled:
    raise ValueError("data.keep_unlabeled feeds distillation losses; causal_lm trains on labels.")
  task, tok = prompt_task(config), load_tokenizer(config)
  kw = dict(manual_dir=d.manual_dir or None, data_dir=d.data_dir or None)
  examples = {s: data_lib.load(task.dataset, task.config, s, **kw)
              for s in ("train", "validation", "test")}
  full_n = len(examples["train"])
  if d.label_fraction < 1.0:
    labeled, _ = pipeline.label_fraction(examples["train"], d.label_fraction, config.seed)
    examples["train"] = [examples["train"][i] for i in labeled]
  rows = {s: _rows(tok, task, ex, max_length=d.max_length, context_words=d.context_words,
                   all_options=s != "train") for s, ex in examples.items()}
  return CausalLMTask(rows, label_strings=task.label_strings, buckets=d.buckets,
                      primary_metric=config.train.best_metric,
                      name=config.tags.task or task.name, full_train_size=full_n)

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
from research import seq_kd
from research import token_losses
from research import zero_shot
from research.data import pipeline
from research.data import prompts
from research.models import registry
from research.tasks import on_policy
from research.tasks import token_cache
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
    generated = not all_options and "answer_text" in example  # sequence-level KD row
    options = zero_shot.option_token_ids(
        tok, prompt_text, prompt_ids,
        [example["answer_text"]] if generated else task.label_strings, suffix)
    for o in (range(len(options)) if all_options else (0 if generated else int(example["label"]),)):
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


def _with_teacher(cache: "token_cache.TeacherTopK | None"):
  """Train batches renamed, with the cached teacher's top-k (when attached) by row index."""
  def fn(batch):
    batch = _rename(batch)
    if cache is not None:
      batch.update(cache.lookup(batch["index"]))
    return batch
  return fn


def _rename(batch: dict) -> dict:
  batch = dict(batch)
  batch["loss_mask"] = batch.pop("token_type_ids")
  return batch


def _answer_logprobs(apply: Apply, params, batch, **kw):
  """(log-prob of each answer token B×A, logits B×A×V f32) at the gathered answer positions."""
  logits = apply(params, batch, **kw)["logits"].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, batch["answer_ids"][..., None], axis=-1)[..., 0], logits


def _teacher_out(kd: Distillation, batch, aux) -> dict:
  """The teacher's view at the answer positions: a cached top-k, or one teacher run now."""
  if "teacher_topk_ids" in batch:
    return {"topk_ids": batch["teacher_topk_ids"], "topk_logprobs": batch["teacher_topk_logprobs"]}
  outs = [t(p, batch, deterministic=True)["logits"] for t, p in zip(kd.teachers, aux)]
  if len(outs) == 1:
    return {"logits": outs[0]}
  # distill.teachers (same vocabulary): their per-token distributions, averaged by teacher_weights.
  return {"logits": token_losses.mix_teachers(outs, kd.teacher_weights, kd.temperature)}


def _kd_loss(kd: Distillation, tok_lp, logits, batch, aux):
  """Σ weight · term: "ce" is the answer-token NLL; the rest are token-level KD terms."""
  weights = dict(kd.weights)
  total, metrics = jnp.zeros((), jnp.float32), {}
  ce = weights.pop("ce", 0.0)
  if ce:
    gold = batch.get("gold_mask", batch["answer_mask"])  # on-policy rows carry no ground truth
    nll, m = losses.token_nll(token_logprobs_BxL=tok_lp, mask_BxL=gold)
    total, metrics = total + ce * nll, {"loss/ce": nll, **{f"ce/{k}": v for k, v in m.items()}}
  if weights:
    kd_total, m = losses.combined_loss(
        weights, student_out={"logits": logits}, teacher_out=_teacher_out(kd, batch, aux),
        batch=batch, temperature=kd.temperature, beta=kd.beta, vocab_chunk=kd.vocab_chunk)
    total = total + kd_total
    metrics.update({k: v for k, v in m.items() if k != "loss"})
  if "on_policy" in batch:
    metrics["on_policy_rows"] = jnp.sum(batch["on_policy"])
  metrics["loss"] = total
  return total, metrics


class CausalLMTask:
  """See research/tasks/base.py for the protocol."""

  metrics = METRICS
  # The gold answers are the training inputs (teacher-forced) even when no loss reads "labels":
  # a token-KD-only row still saw them, so the labeled count stays (research/train/loop.py).
  answers_are_inputs = True

  def __init__(self, rows: Mapping[str, _Rows], *, label_strings: Sequence[str], buckets,
               primary_metric: str = "accuracy", name: str = "causal_lm",
               full_train_size: int | None = None):
    self.max_answer = max(int(r.tokens.token_type_ids.sum(1).max()) for r in rows.values())
    self.teacher_cache: token_cache.TeacherTopK | None = None
    self.n_labeled: int | None = None    # train rows with a gold answer (None: all of them)
    self.generations: dict | None = None  # data.answers' meta (sequence-level KD)
    self.stop_ids: tuple[int, ...] = ()  # the tokenizer's end-of-answer ids (on-policy sampling)
    if primary_metric not in METRICS:
      raise ValueError(f"train.best_metric={primary_metric!r}; use one of {METRICS}.")
    self.name, self.primary_metric, self._rows = name, primary_metric, dict(rows)
    self.label_strings, self.buckets = tuple(label_strings), tuple(buckets)
    self.splits = {k: r.tokens for k, r in self._rows.items()}
    self.full_train_size = full_train_size or len(self.splits["train"])

  def train_batches(self, *, batch_size: int, seed: int, epoch: int = 0, step: int = 0):
    it = pipeline.TrainIterator(self.splits["train"], batch_size, self.buckets, seed=seed,
                                epoch=epoch, step=step, process_index=jax.process_index(),
                                process_count=jax.process_count())
    return pipeline.MappedBatches(it, _with_teacher(self.teacher_cache))

  def eval_batches(self, split: str, batch_size: int, all_rows: bool = False):
    """Every row of `split` once; this process's slice of each batch (`all_rows`: every row)."""
    index, count = (0, 1) if all_rows else (jax.process_index(), jax.process_count())
    for b in pipeline.eval_batches(self.splits[split], batch_size, self.buckets, labeled=False,
                                   process_index=index, process_count=count):
      yield _rename(b)

  def batch_width(self, batch) -> int:
    return int(batch["input_ids"].shape[1])

  def loss_fn(self, apply: Apply, *, kd: Distillation | None = None,
              label_smoothing: float = 0.0) -> LossFn:
    if label_smoothing:
      raise ValueError("train.label_smoothing is for classifiers; set it to 0 for causal_lm.")
    max_answer = self.max_answer

    def loss_fn(params, batch, rng, aux):
      batch = {**batch, **token_cache.answer_positions(batch, max_answer)}
      if kd is not None and kd.on_policy > 0:
        rng, sample_rng = jax.random.split(rng)
        batch = on_policy.student_samples(apply, params, batch, sample_rng,
                                          fraction=kd.on_policy, temperature=kd.sample_temperature,
                                          stop_ids=self.stop_ids)
      tok_lp, logits = _answer_logprobs(apply, params, batch, deterministic=False, rng=rng)
      if kd is None:
        return losses.token_nll(token_logprobs_BxL=tok_lp, mask_BxL=batch["answer_mask"])
      return _kd_loss(kd, tok_lp, logits, batch, aux)
    return loss_fn

  def predict_fn(self, apply: Apply) -> PredictFn:
    max_answer = self.max_answer

    def predict_fn(params, batch, aux):
      del aux
      batch = {**batch, **token_cache.answer_positions(batch, max_answer)}
      tok_lp, _ = _answer_logprobs(apply, params, batch, deterministic=True)
      return {"score": jnp.sum(tok_lp * batch["answer_mask"], -1), "valid": batch["valid"],
              "index": batch["index"]}
    return predict_fn

  def option_scores(self, predictions: Mapping[str, Any], split: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(scores N×C: each example's summed answer log-prob per label, gold labels N)."""
    rows = self._rows[split]
    idx = np.asarray(predictions["index"])
    scores = np.full((len(rows.labels), len(self.label_strings)), -np.inf, np.float32)
    scores[rows.example[idx], rows.option[idx]] = np.asarray(predictions["score"])
    return scores, rows.labels

  def evaluate(self, predictions: Mapping[str, Any], split: str) -> dict:
    """Label scoring: argmax over each example's option scores (summed answer log-probs)."""
    scores, labels = self.option_scores(predictions, split)
    out = metrics_lib.classification_metrics(scores, labels, label_names=self.label_strings)
    # Per-example label-scoring predictions in dataset order (research/significance.py pairs them).
    out["predictions"], out["labels"] = scores.argmax(1).tolist(), np.asarray(labels).tolist()
    return out

  def attach_teacher(self, kd_setup: Any, config: Any) -> bool:
    """Optional protocol hook: a cached teacher instead of one run in every step."""
    return use_teacher_cache(self, kd_setup, config)

  def labeled_count(self, split: str = "train") -> int:
    if split == "train" and self.n_labeled is not None:
      return self.n_labeled  # the rest train on teacher answers (data.answers)
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
  examples["train"], n_labeled, gen_meta = _train_examples(examples["train"], d, config.seed,
                                                           task.name)
  rows = {s: _rows(tok, task, ex, max_length=d.max_length, context_words=d.context_words,
                   all_options=s != "train") for s, ex in examples.items()}
  out = CausalLMTask(rows, label_strings=task.label_strings, buckets=d.buckets,
                     primary_metric=config.train.best_metric,
                     name=config.tags.task or task.name, full_train_size=full_n)
  out.n_labeled, out.generations = n_labeled, gen_meta
  out.stop_ids = tuple(int(i) for i in tok.stop_ids)
  return out


def _train_examples(train: list[dict], d: Any, seed: int, task_name: str
                    ) -> tuple[list[dict], int, dict | None]:
  """(train examples, how many keep their gold answer, generations meta or None).

  label_fraction < 1 keeps that stratified share of gold answers; with data.answers the other
  examples take the teacher's generated answer instead of being dropped. Several answer files
  (comma-separated: several teachers' generations, pooled) give each such example once per file.
  """
  keep = (pipeline.label_fraction(train, d.label_fraction, seed)[0] if d.label_fraction < 1.0
          else range(len(train)))
  files = [f for f in str(d.get("answers", "")).split(",") if f]
  if not files:
    return [train[i] for i in keep], len(keep), None
  # With teacher answers every example stays; those without a kept gold answer (all of them at
  # label_fraction 1) take the teacher's.
  gold = set(keep) if d.label_fraction < 1.0 else set()
  generated = [i for i in range(len(train)) if i not in gold]
  out, metas, parsed = list(train), [], []
  for k, path in enumerate(files):
    rows, meta, ok = _generated(path, train, generated, d, task_name)
    if k == 0:  # the first file's answers take the examples' places (one file: the same order)
      for i, row in zip(generated, rows):
        out[i] = row
    else:
      out.extend(rows)
    metas.append(meta)
    parsed += ok
  summary = {"n_generated": len(generated) * len(files),
             "used_parse_rate": sum(parsed) / max(len(parsed), 1)}
  if len(files) == 1:
    return out, len(gold), {**metas[0], **summary}
  return out, len(gold), {"path": d.answers, "files": metas, **summary}


def _generated(path: str, train: list[dict], generated: list[int], d: Any, task_name: str
               ) -> tuple[list[dict], dict, list[bool]]:
  """One answers file's rows for the `generated` examples, its meta, and which answers parse."""
  answers = seq_kd.read_answers(path)
  missing = [str(train[i]["id"]) for i in generated if str(train[i]["id"]) not in answers]
  if missing:
    raise ValueError(f"data.answers {path!r} has no answer for {len(missing)} train examples "
                     f"(e.g. {missing[:3]}); generate them for this dataset's train split.")
  meta = seq_kd.read_meta(path)
  seq_kd.check_matches(meta, prompt_task=task_name, context_words=d.context_words, path=path)
  rows = [dict(train[i], answer_text=answers[str(train[i]["id"])]["answer"]) for i in generated]
  ok = [answers[str(train[i]["id"])]["parsed"] is not None for i in generated]
  return rows, {"path": path, "sha256": seq_kd.file_sha256(path), **meta}, ok


def use_teacher_cache(task: CausalLMTask, kd_setup: Any, config: Any) -> bool:
  """With distill.cache_top_k > 0: attaches the teacher's top-k cache (building it once) so the
  train step never runs the teacher. Returns whether it did."""
  k = int(config.distill.get("cache_top_k", 0))
  if k and float(config.distill.get("on_policy", 0.0)) > 0:
    raise ValueError("distill.on_policy > 0 needs the teacher live (it scores the student's own "
                     "samples); set distill.cache_top_k=0.")
  if not k or "teacher" not in losses.required_outputs(kd_setup.weights):
    return False  # nothing to cache, or no loss reads the teacher (the control, sequence KD)
  if len(kd_setup.teacher_models) != 1:
    raise ValueError("distill.cache_top_k caches one teacher; give one distill.teacher.")
  family = registry.get_family(kd_setup.family)
  apply, t_cfg = family.bind(kd_setup.teacher_models[0]), kd_setup.teacher_cfgs[0]
  task.teacher_cache = token_cache.load_or_build(
      task, config.distill.teacher, apply, kd_setup.aux[0], t_cfg, k=k,
      temperature=config.distill.temperature, batch_size=config.data.eval_batch_size,
      forward_flops=lambda b, width: family.analytic_flops(t_cfg, b, width, False))
  return True

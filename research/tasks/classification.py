"""Text classification (single- and multi-label): the encoder tables' task.

Batches come from research/data/pipeline.py; the loss is cross-entropy (sigmoid BCE for multilabel)
or, when distilling, `losses.combined_loss` against frozen teachers; predictions are B×C logits;
metrics are accuracy, macro-F1 and a per-class report (research/metrics.py).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research import losses
from research import metrics as metrics_lib
from research.checkpoints import hf
from research.data import pipeline
from research.data import synthetic
from research.tasks.base import Apply, Distillation, LossFn, PredictFn

METRICS = ("accuracy", "macro_f1")
PROJ_KEY = losses.PROJ_KEY
SYNTHETIC_CLASSES = 4


def num_outputs(config: Any) -> int:
  """The classifier width C of a run config's dataset (read before the model is built)."""
  d = config.data
  if d.name == synthetic.NAME:
    return SYNTHETIC_CLASSES
  return data_lib.info(d.name, d.config or None, manual_dir=d.manual_dir or None,
                       data_dir=d.data_dir or None).num_classes


def _load(config: Any, model_cfg: Any) -> tuple[dict, dict]:
  """Tokenized train/validation/test splits and the dataset summary."""
  d = config.data
  if d.name == synthetic.NAME:
    c = model_cfg.num_labels
    splits = synthetic.splits(num_classes=c, vocab_size=model_cfg.vocab_size,
                              max_length=d.max_length, seed=config.seed)
    return splits, dict(label_names=tuple(f"class_{i}" for i in range(c)), multilabel=False,
                        full_train_size=synthetic.SIZES["train"])
  kw = dict(manual_dir=d.manual_dir or None, data_dir=d.data_dir or None)
  meta = data_lib.info(d.name, d.config or None, **kw)
  tok = str(hf.resolve_source(config.model.source))
  splits = {s: pipeline.load_tokenized(d.name, d.config or None, s, max_length=d.max_length,
                                       tokenizer_path=tok, **kw)
            for s in ("train", "validation", "test")}
  full_n = len(splits["train"])
  if d.label_fraction < 1.0:
    records = data_lib.load(d.name, d.config or None, "train", **kw)
    labeled, unlabeled = pipeline.label_fraction(records, d.label_fraction, config.seed)
    if d.keep_unlabeled:  # every input stays; the unlabeled rest only feeds distillation losses
      labels = np.array(splits["train"].labels, copy=True)
      labels[np.asarray(unlabeled, np.int64)] = -1
      splits["train"] = dataclasses.replace(splits["train"], labels=labels)
    else:
      splits["train"] = splits["train"].subset(labeled)
  return splits, dict(label_names=tuple(meta.label_names), multilabel=meta.multilabel,
                      full_train_size=full_n)


class ClassificationTask:
  """See research/tasks/base.py for the protocol."""

  metrics = METRICS

  def __init__(self, splits: Mapping[str, pipeline.TokenizedSplit], *, label_names, multilabel,
               full_train_size: int, buckets, primary_metric: str = "accuracy",
               name: str = "classification", process_index: int = 0, process_count: int = 1):
    if primary_metric not in METRICS:
      raise ValueError(f"train.best_metric={primary_metric!r}; use one of {METRICS}.")
    self.name, self.splits, self.primary_metric = name, dict(splits), primary_metric
    self.label_names, self.multilabel = tuple(label_names), bool(multilabel)
    self.full_train_size, self.buckets = int(full_train_size), tuple(buckets)
    self._proc = dict(process_index=process_index, process_count=process_count)
    self.teacher_cache: TeacherLabelLogits | None = None  # distill.teacher_logits, when attached

  @classmethod
  def from_config(cls, config: Any, model_cfg: Any) -> "ClassificationTask":
    splits, info = _load(config, model_cfg)
    return cls(splits, buckets=config.data.buckets, primary_metric=config.train.best_metric,
               name=config.tags.task or config.data.name, process_index=jax.process_index(),
               process_count=jax.process_count(), **info)

  # -- batches

  def train_batches(self, *, batch_size: int, seed: int, epoch: int = 0, step: int = 0):
    it = pipeline.TrainIterator(self.splits["train"], batch_size, self.buckets, seed=seed,
                                epoch=epoch, step=step, **self._proc)
    cache = self.teacher_cache
    if cache is None:
      return it
    return pipeline.MappedBatches(it, lambda b: {**b, "teacher_logits": cache.lookup(b["index"])})

  def attach_teacher(self, kd_setup: Any, config: Any) -> bool:
    """distill.teacher_logits: the precomputed teacher logits ride in the train batches."""
    path = config.distill.get("teacher_logits")
    if not path:
      return False
    self.teacher_cache = TeacherLabelLogits.load(path, self.splits["train"].ids,
                                                 self.label_names)
    return True

  def eval_batches(self, split: str, batch_size: int):
    return pipeline.eval_batches(self.splits[split], batch_size, self.buckets, labeled=False,
                                 **self._proc)

  def batch_width(self, batch) -> int:
    return int(batch["input_ids"].shape[1])

  # -- losses and predictions

  def loss_fn(self, apply: Apply, *, kd: Distillation | None = None,
              label_smoothing: float = 0.0) -> LossFn:
    if kd is not None:
      return kd_loss_fn(apply, kd, multilabel=self.multilabel, label_smoothing=label_smoothing)
    return loss_fn(apply, multilabel=self.multilabel, label_smoothing=label_smoothing)

  def predict_fn(self, apply: Apply) -> PredictFn:
    def predict_fn(params, batch, aux):
      del aux
      logits = apply(params, batch, deterministic=True)["logits"]
      return {"logits": logits, "valid": batch["valid"], "index": batch["index"]}
    return predict_fn

  # -- metrics and counts

  def evaluate(self, predictions: Mapping[str, Any], split: str) -> dict:
    index_N = np.asarray(predictions["index"])
    logits, labels = np.asarray(predictions["logits"]), self.splits[split].labels[index_N]
    out = metrics_lib.classification_metrics(
        logits, labels, multilabel=self.multilabel, label_names=self.label_names)
    # Per-example predictions in dataset order, for paired tests between runs (research/paired.py).
    order = np.argsort(index_N, kind="stable")
    pred = (logits > 0.0).astype(int) if self.multilabel else logits.argmax(-1)
    out["predictions"] = pred[order].tolist()
    out["labels"] = np.asarray(labels)[order].tolist()
    return out

  def labeled_count(self, split: str = "train") -> int:
    """Rows whose label is known (unlabeled rows carry -1; multilabel rows are all labeled)."""
    data = self.splits[split]
    if data.labels is None:
      return 0
    labels = np.asarray(data.labels)
    return int((labels >= 0).sum()) if labels.ndim == 1 else len(data)


@dataclasses.dataclass(frozen=True)
class TeacherLabelLogits:
  """A teacher's label logits per train row (aligned to the split by example id), and its meta."""
  logits_NxC: np.ndarray
  meta: dict

  @classmethod
  def load(cls, path: str, ids: tuple[str, ...], label_names: tuple[str, ...]
           ) -> "TeacherLabelLogits":
    with np.load(path) as f:
      file_ids, logits = [str(x) for x in f["ids"]], np.asarray(f["logits"], np.float32)
      meta = json.loads(str(f["meta"]))
    names = tuple(meta.get("label_names", ()))
    if names and tuple(n.lower() for n in names) != tuple(n.lower() for n in label_names):
      raise ValueError(f"distill.teacher_logits {path}: labels {names} != the task's "
                       f"{label_names}; build the file for this task.")
    teacher = pathlib.Path(str(meta.get("teacher_dir", "")), "result.json")
    if meta.get("teacher_fingerprint") and teacher.is_file():
      now = json.loads(teacher.read_text()).get("fingerprint")
      if now != meta["teacher_fingerprint"]:
        raise ValueError(f"distill.teacher_logits {path}: made from teacher run "
                         f"{meta['teacher_dir']} with fingerprint {meta['teacher_fingerprint']}, "
                         f"which now holds {now}; rebuild the file "
                         "(experiments/teacher_label_logits.py).")
    pos = {i: k for k, i in enumerate(file_ids)}
    missing = [i for i in ids if str(i) not in pos]
    if missing:
      raise ValueError(f"distill.teacher_logits {path}: no logits for {len(missing)} of "
                       f"{len(ids)} train examples (e.g. {missing[:3]}); build it on this "
                       "task's train split (experiments/teacher_label_logits.py).")
    rows = logits[[pos[str(i)] for i in ids]]
    return cls(rows, dict(meta, path=str(path), n=len(ids)))

  def lookup(self, index_B: np.ndarray) -> np.ndarray:
    return self.logits_NxC[np.clip(np.asarray(index_B, np.int64), 0, len(self.logits_NxC) - 1)]


def loss_fn(apply: Apply, *, multilabel: bool = False, label_smoothing: float = 0.0) -> LossFn:
  """Fine-tuning loss: CE with label smoothing over rows with valid=1 and label >= 0 (unlabeled
  rows carry -1); multilabel: sigmoid BCE (research/losses.py)."""
  def loss_fn(params, batch, rng, aux):
    del aux
    logits_BxC = apply(params, batch, deterministic=False, rng=rng)["logits"]
    valid_B = batch.get("valid", jnp.ones(logits_BxC.shape[:1], jnp.float32))
    if multilabel:
      return losses.sigmoid_cross_entropy(logits_BxC=logits_BxC, labels_BxC=batch["label"],
                                          valid_B=valid_B, label_smoothing=label_smoothing)
    return losses.cross_entropy(logits_BxC=logits_BxC, labels_B=batch["label"], valid_B=valid_B,
                                label_smoothing=label_smoothing)
  return loss_fn


def kd_loss_fn(apply: Apply, kd: Distillation, *, multilabel: bool = False,
               label_smoothing: float = 0.0) -> LossFn:
  """Student vs frozen teachers (teacher params in `aux`, one per `kd.teachers`).

  `apply` folds LoRA adapters into the student, so adapters of a LoRA student get gradients.
  """
  needs = losses.required_outputs(kd.weights)
  outputs = tuple(o for o in ("hidden_states", "attentions") if o in needs)
  weights, several = dict(kd.weights), len(kd.teachers) > 1

  def loss_fn(params, batch, rng, aux):
    params = dict(params)
    proj = params.pop(PROJ_KEY, None)
    s_out = apply(params, batch, deterministic=False, rng=rng, outputs=outputs)
    if "teacher_logits" in batch:  # precomputed (distill.teacher_logits): no teacher model
      t_outs = [{"logits": batch["teacher_logits"]}]
    elif "teacher" not in needs:  # e.g. the same-init control: ground truth only, no teacher pass
      t_outs = []
    else:
      t_outs = [t(jax.lax.stop_gradient(p), batch, deterministic=True, outputs=outputs)
                for t, p in zip(kd.teachers, aux)]
    t_out = dict(t_outs[0]) if t_outs else {}
    if several and t_outs:
      t_out["logits"] = [o["logits"] for o in t_outs]
    return losses.combined_loss(
        weights, student_out=s_out, teacher_out=t_out, batch=batch, temperature=kd.temperature,
        layer_map=kd.layer_map, proj_params=proj, teacher_weights=kd.teacher_weights,
        label_smoothing=label_smoothing, top_k=kd.top_k, multilabel=multilabel)
  return loss_fn


def build(config: Any, model_cfg: Any) -> ClassificationTask:
  return ClassificationTask.from_config(config, model_cfg)

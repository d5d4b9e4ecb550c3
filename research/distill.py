"""Student construction and pre-training checks for knowledge distillation.

* `select_layers`: DistilBERT-style student (Sanh et al. 2019) — copy the teacher's embeddings, a
  subset of its layers (renumbered 0..) and everything else (pooler, head), through the family's
  parameter layout (research/models/layout.py).
* `fresh_student`: a smaller config (fewer layers / narrower) for a randomly initialised student.
* `check_setup` and friends: fail with a clear message before any compute.
* `cache_teacher_logits` / `load_teacher_logits`: run an expensive teacher once over the training
  set; later epochs look its logits up by example `index`.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any

import jax
import numpy as np

from research import losses as losses_lib
from research.checkpoints import store as store_lib
from research.losses import check_layer_map, default_layer_map  # re-exported for callers
from research.models import registry
from research.tasks import Distillation

__all__ = [
    "select_layers", "every_other", "first_k", "fresh_student", "check_layer_map",
    "default_layer_map", "check_compatible", "check_teacher_dir", "check_setup", "TEACHER_FILES",
    "cache_teacher_logits", "load_teacher_logits", "TeacherLogits", "teacher_finished",
    "run_with_teacher",
]

# Files a teacher export must hold: the HF-format folder written/read by research/checkpoints/hf.py.
TEACHER_FILES = ("config.json", "model.safetensors")

# Size fields `fresh_student` may override (EncoderConfig names).
_SIZE_FIELDS = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size")


def _replace(cfg, **changes):
  """`cfg.replace(...)` when the config class has one, else dataclasses.replace."""
  if hasattr(cfg, "replace"):
    return cfg.replace(**changes)
  return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------- student construction


def every_other(num_layers: int) -> tuple[int, ...]:
  """Layers 0, 2, 4, ... of a `num_layers`-layer teacher (DistilBERT: one layer out of two)."""
  return tuple(range(0, num_layers, 2))


def first_k(k: int) -> tuple[int, ...]:
  """The bottom k layers: 0..k-1."""
  return tuple(range(k))


def select_layers(teacher_params: Mapping[str, Any], teacher_cfg, layers: Sequence[int],
                  family: str = "bert") -> tuple[dict[str, Any], Any]:
  """Initialises a student from a subset of the teacher's layers (DistilBERT, Sanh et al. 2019).

  Copies every non-layer param (embeddings, pooler, head) and teacher layer `layers[i]` as
  student layer i. Arrays are copied, so donating the student's buffers in a jitted train step
  cannot invalidate the (frozen) teacher's.

  Args:
    teacher_params: the teacher's params pytree (LoRA merged).
    teacher_cfg: the teacher's model config.
    layers: teacher layer indices, distinct, each in [0, teacher_cfg.num_layers).
    family: the model family (its layout says which params are layers).

  Returns:
    (student_params, student_cfg) with student_cfg.num_layers == len(layers).
  """
  num = teacher_cfg.num_layers
  layers = tuple(int(i) for i in layers)
  if not layers:
    raise ValueError(f"select_layers: no layers given; pick some of 0..{num - 1}, e.g. "
                     f"every_other({num}) = {every_other(num)}.")
  bad = [i for i in layers if not 0 <= i < num]
  if bad:
    raise ValueError(f"select_layers: teacher layers {bad} out of range; the teacher has layers "
                     f"0..{num - 1} (distill.student_layers = {layers}).")
  if len(set(layers)) != len(layers):
    raise ValueError(f"select_layers: layers {layers} repeat an index; list each layer once.")
  if "lora" in teacher_params:
    raise ValueError("select_layers: teacher params hold LoRA adapters; fold them in first with "
                     "masking.merge_lora(params).")
  fam = registry.get_family(family)
  found = fam.layout(teacher_cfg).num_layers(list(_paths(teacher_params)))
  if found != num:
    raise ValueError(f"select_layers: teacher params have {found} layers but teacher_cfg.num_layers="
                     f"{num}; params and config come from different models (docs/ARCHITECTURE.md).")
  return fam.slice_layers(dict(teacher_params), _replace(teacher_cfg), layers)


def _paths(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _paths(v, f"{prefix}{k}/")
    else:
      yield f"{prefix}{k}"


def fresh_student(cfg, **overrides):
  """A smaller config for a randomly initialised student, e.g. fresh_student(cfg, num_layers=2).

  Zero or None values keep cfg's value, so `**config.model.overrides` can be passed as is.

  Args:
    cfg: base EncoderConfig (usually the teacher's).
    **overrides: num_layers, hidden_size, num_heads, intermediate_size, vocab_size.

  Returns:
    The new config (same class).
  """
  unknown = sorted(set(overrides) - set(_SIZE_FIELDS))
  if unknown:
    raise ValueError(f"fresh_student: unknown size field(s) {unknown}; "
                     f"known: {list(_SIZE_FIELDS)}.")
  changes = {k: int(v) for k, v in overrides.items() if v}
  bad = {k: v for k, v in changes.items() if v < 0}
  if bad:
    raise ValueError(f"fresh_student: sizes must be positive, got {bad}.")
  new = _replace(cfg, **changes)
  if new.hidden_size % new.num_heads:
    raise ValueError(f"fresh_student: hidden_size {new.hidden_size} is not divisible by num_heads "
                     f"{new.num_heads}; choose hidden_size = num_heads × head_dim.")
  return new


# ----------------------------------------------------------------------------- checks


def check_compatible(student_cfg, teacher_cfg) -> None:
  """Student and teacher must read the same token ids and predict the same label set."""
  if student_cfg.vocab_size != teacher_cfg.vocab_size:
    raise ValueError(f"student vocab_size {student_cfg.vocab_size} != teacher vocab_size "
                     f"{teacher_cfg.vocab_size}; both must share the teacher's tokenizer (drop "
                     "model.overrides.vocab_size).")
  if getattr(student_cfg, "num_labels", None) != getattr(teacher_cfg, "num_labels", None):
    raise ValueError(f"student num_labels {student_cfg.num_labels} != teacher num_labels "
                     f"{teacher_cfg.num_labels}; distil on the task the teacher was trained for.")


def check_teacher_dir(path: str | os.PathLike,
                      required: Sequence[str] = TEACHER_FILES) -> pathlib.Path:
  """Checks a teacher checkpoint folder exists and holds `required`; returns it as a Path."""
  if not path:
    raise ValueError("no teacher given; set distill.teacher to a fine-tuned teacher's export.")
  p = pathlib.Path(path)
  if not p.is_dir():
    raise FileNotFoundError(f"teacher checkpoint dir {str(p)!r} does not exist; train the teacher "
                            "first (experiments/finetune.py) or fix distill.teacher.")
  missing = [f for f in required if not (p / f).exists()]
  if missing:
    raise FileNotFoundError(f"teacher checkpoint dir {str(p)!r} lacks {missing} (has "
                            f"{sorted(x.name for x in p.iterdir())}); point distill.teacher at an "
                            "exported teacher.")
  return p


def check_setup(*, student_cfg, teacher_cfg, losses: Mapping[str, float],
                layer_map: Sequence[int] = (), teacher_dirs: Sequence[str] = (),
                cached_logits: bool = False) -> dict[str, float]:
  """All distillation checks that can run before training; returns the active loss weights.

  Args:
    student_cfg, teacher_cfg: EncoderConfigs (teacher_cfg of the first teacher).
    losses: c.distill.losses.
    layer_map: c.distill.layer_map; () -> default uniform map.
    teacher_dirs: teacher export folders to check (may be empty when configs were built in memory).
    cached_logits: teacher logits come from `cache_teacher_logits` (logit losses only).
  """
  active = losses_lib.check_loss_weights(losses)
  check_compatible(student_cfg, teacher_cfg)
  needs = losses_lib.required_outputs(active)
  if "hidden_states" in needs and layer_map:
    check_layer_map(layer_map, student_cfg.num_layers, teacher_cfg.num_layers)
  if cached_logits and needs & {"hidden_states", "attentions"}:
    raise ValueError(f"cached teacher logits cannot serve {sorted(needs - {'teacher'})} losses "
                     f"in {sorted(active)}; set distill.cache_teacher_logits=False.")
  for d in teacher_dirs:
    check_teacher_dir(d)
  return active


# ----------------------------------------------------------------------------- teacher logits cache


@dataclasses.dataclass(frozen=True)
class TeacherLogits:
  """Teacher logits by example index (position in the split)."""
  index_N: np.ndarray      # int64 N, sorted
  logits_NxC: np.ndarray   # float32 N×C
  meta: dict[str, Any]

  def lookup(self, index_B: np.ndarray, valid_B: np.ndarray | None = None) -> np.ndarray:
    """Logits for a batch, B×C; rows with valid_B == 0 (padding) get zeros."""
    index_B = np.asarray(index_B, np.int64)
    valid_B = np.ones(index_B.shape, bool) if valid_B is None else np.asarray(valid_B) > 0
    pos_B = np.clip(np.searchsorted(self.index_N, index_B), 0, len(self.index_N) - 1)
    found_B = self.index_N[pos_B] == index_B
    missing = index_B[valid_B & ~found_B]
    if missing.size:
      raise KeyError(f"teacher logits cache has no entry for example index {missing[:8].tolist()}; "
                     "the cache was built on another split or dataset — rebuild it.")
    return np.where(valid_B[:, None], self.logits_NxC[pos_B], 0.0).astype(np.float32)


def cache_teacher_logits(apply_fn: Callable[[Any, Mapping[str, np.ndarray]], Any], params: Any,
                         batches: Iterable[Mapping[str, np.ndarray]], path: str | os.PathLike,
                         meta: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Runs the teacher once over `batches` and writes its logits to an .npz keyed by `index`.

  Args:
    apply_fn: (params, batch) -> logits B×C or an output dict with "logits" (jit it yourself).
    params: teacher params.
    batches: batch dicts with "index" and "valid"; padding rows are skipped.
    path: output file (".npz" is appended if missing); parent folders are created.
    meta: JSON-able description (teacher dir, dataset, split, max_length) checked on load.

  Returns:
    The written path.
  """
  idx, logits = [], []
  for batch in batches:
    out = apply_fn(params, batch)
    z = np.asarray(out["logits"] if isinstance(out, Mapping) else out, np.float32)
    keep = np.asarray(batch["valid"]) > 0
    idx.append(np.asarray(batch["index"], np.int64)[keep])
    logits.append(z[keep])
  if not idx:
    raise ValueError("cache_teacher_logits: no batches given.")
  index_N, logits_NxC = np.concatenate(idx), np.concatenate(logits)
  order = np.argsort(index_N, kind="stable")
  index_N, logits_NxC = index_N[order], logits_NxC[order]
  if np.any(np.diff(index_N) == 0):
    raise ValueError("cache_teacher_logits: an example index appears twice; pass one epoch of "
                     "unshuffled-or-shuffled batches without repeats.")
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path.with_name(path.name + ".npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, index=index_N, logits=logits_NxC, meta=json.dumps(dict(meta or {}), sort_keys=True))
  os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache behind
  return path


def load_teacher_logits(path: str | os.PathLike,
                        expect_meta: Mapping[str, Any] | None = None) -> TeacherLogits:
  """Loads a `cache_teacher_logits` file; `expect_meta` entries must match the stored meta."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"teacher logits cache {str(path)!r} not found; build it with "
                            "cache_teacher_logits.")
  with np.load(path) as f:
    cache = TeacherLogits(index_N=f["index"], logits_NxC=f["logits"],
                          meta=json.loads(str(f["meta"])))
  # Compare after a JSON round trip so tuples match their stored lists.
  expect = json.loads(json.dumps(dict(expect_meta or {}), sort_keys=True))
  stale = {k: (cache.meta.get(k), v) for k, v in expect.items() if cache.meta.get(k) != v}
  if stale:
    raise ValueError(f"teacher logits cache {str(path)!r} is stale: (stored, expected) {stale}; "
                     "delete it to rebuild.")
  return cache


# ----------------------------------------------------------------------------- training setup

PROJ_KEY = losses_lib.PROJ_KEY  # params[PROJ_KEY]: learned student->teacher width projections


def is_distillation(config) -> bool:
  """True when a run config names one or more teachers (run dirs, or precomputed label logits)."""
  return bool(config.distill.teacher or tuple(config.distill.teachers)
              or config.distill.get("teacher_logits"))


def teacher_dirs(config) -> tuple[str, ...]:
  """The teacher run dirs whose models the run loads (none for distill.teacher_logits alone)."""
  d = config.distill
  return tuple(d.teachers) or ((d.teacher,) if d.teacher else ())


@dataclasses.dataclass
class DistillSetup:
  """What a distillation run trains, and against what.

  Attributes:
    model: the student module.
    params: student params (+ params[PROJ_KEY] when hidden-state widths differ).
    model_cfg: the student's config.
    teacher_models / teacher_cfgs: the frozen teachers.
    aux: tuple of teacher params (passed to the train step, never differentiated).
    weights: the active loss weights.
    family: the model family of student and teachers.
  """
  model: Any
  params: Any
  model_cfg: Any
  teacher_models: tuple
  teacher_cfgs: tuple
  aux: tuple
  weights: dict
  family: str = "bert"
  cached: bool = False   # the task holds the teacher's outputs (no teacher in the train step)

  def uses_labels(self) -> bool:
    """Whether ground-truth labels enter the loss (each loss declares it: losses.reads_labels)."""
    return losses_lib.reads_labels(self.weights)

  def reads_teacher(self) -> bool:
    """Whether any loss term reads a teacher (the same-init control reads none: kind finetune)."""
    return self.cached or "teacher" in losses_lib.required_outputs(self.weights)

  def distillation(self, config) -> Distillation:
    """The task's view of this setup: teacher calls and loss settings."""
    fam = registry.get_family(self.family)
    d = config.distill
    return Distillation(
        weights=dict(self.weights), teachers=tuple(fam.bind(m) for m in self.teacher_models),
        temperature=d.temperature, layer_map=tuple(d.layer_map),
        teacher_weights=tuple(d.teacher_weights) or None, top_k=d.top_k,
        beta=d.get("beta", 0.5), vocab_chunk=d.get("vocab_chunk", 0),
        on_policy=d.get("on_policy", 0.0), sample_temperature=d.get("sample_temperature", 1.0))

  def teacher_forward_flops(self, batch: int, seq_len: int) -> float:
    if self.cached or "teacher" not in losses_lib.required_outputs(self.weights):
      return 0.0  # cached (counted once, when built: teacher_cache), or no loss reads the teacher
    fam = registry.get_family(self.family)
    return float(sum(fam.analytic_flops(c, batch, seq_len, False) for c in self.teacher_cfgs))


def _load_teachers(config, num_labels: int) -> list[tuple[Any, Any]]:
  d = config.distill
  dirs = teacher_dirs(config)
  if d.teacher and tuple(d.teachers):
    raise ValueError("set distill.teacher or distill.teachers, not both.")
  if d.teacher_weights and len(d.teacher_weights) != len(dirs):
    raise ValueError(f"distill.teacher_weights has {len(d.teacher_weights)} entries for "
                     f"{len(dirs)} teachers.")
  for p in dirs:
    check_teacher_dir(p)
    if not store_lib.has_exported_params(p):
      raise FileNotFoundError(f"teacher run dir {p!r} has no exported best params (best/); "
                              "finish the teacher's fine-tuning run first.")
  loaded = [store_lib.load_run_params(p) for p in dirs]
  for (_, c), p in zip(loaded, dirs):
    if getattr(c, "num_labels", num_labels) != num_labels:  # decoders predict tokens, not labels
      raise ValueError(f"teacher {p!r} predicts {c.num_labels} labels but the dataset "
                       f"{config.data.name}/{config.data.config} has {num_labels}; use a teacher "
                       "fine-tuned on this task.")
  return loaded


def _student(config, loaded, *, num_labels: int, rng) -> tuple[Any, Any]:
  d, fam = config.distill, config.model.family
  if d.student_init == "layers":
    return select_layers(loaded[0][0], loaded[0][1], tuple(d.student_layers), family=fam)
  if d.student_init == "fresh":
    _, params, s_cfg = registry.build_model(
        fam, config.model.source or None, num_labels=num_labels,
        dtype=config.model.dtype, pooling=config.model.pooling,
        overrides=config.model.overrides.to_dict(), random_init=config.model.random_init,
        rng=rng, dropout=config.model.dropout)
    if tuple(config.model.layers):
      params, s_cfg = select_layers(params, s_cfg, tuple(config.model.layers), family=fam)
    return params, s_cfg
  raise ValueError(f"distill.student_init={d.student_init!r}; use 'layers' or 'fresh'.")


def _run_settings(s_cfg, config):
  """The student's config with the run's dtype and dropout (decoders have no dropout)."""
  dropout = {f: config.model.dropout for f in ("hidden_dropout", "attention_dropout")
             if hasattr(s_cfg, f)}
  return _replace(s_cfg, dtype=config.model.dtype, **dropout)


def build_setup(config, *, num_labels: int, rng) -> DistillSetup:
  """Loads the teachers, builds the student and checks everything before any training.

  Student: `distill.student_init="layers"` copies `distill.student_layers` of the (first) teacher
  (DistilBERT-style); "fresh" builds `config.model` (its overrides, random_init, layers).
  """
  d = config.distill
  if d.get("teacher_logits"):
    return _logits_setup(config, num_labels=num_labels, rng=rng)
  loaded = _load_teachers(config, num_labels)
  family = registry.get_family(config.model.family)
  t_cfgs = tuple(_replace(c, dtype=config.model.dtype) for _, c in loaded)
  params, s_cfg = _student(config, loaded, num_labels=num_labels, rng=rng)
  s_cfg = _run_settings(s_cfg, config)
  for c in t_cfgs[1:]:
    check_compatible(s_cfg, c)
  weights = check_setup(student_cfg=s_cfg, teacher_cfg=t_cfgs[0], losses=d.losses.to_dict(),
                        layer_map=tuple(d.layer_map))
  if "hidden_states" in losses_lib.required_outputs(weights):
    n_map = len(d.layer_map) or s_cfg.num_layers
    proj = losses_lib.init_projections(rng, s_cfg.hidden_size, t_cfgs[0].hidden_size, n_map)
    if proj:
      params = dict(params, **{PROJ_KEY: proj})
  return DistillSetup(
      model=family.classifier(s_cfg), params=params, model_cfg=s_cfg,
      teacher_models=tuple(family.classifier(c) for c in t_cfgs), teacher_cfgs=t_cfgs,
      aux=tuple(jax.tree.map(np.asarray, p) for p, _ in loaded), weights=weights,
      family=config.model.family)


def _logits_setup(config, *, num_labels: int, rng) -> DistillSetup:
  """A student of precomputed teacher label logits (`distill.teacher_logits`, e.g. an SFT'd
  decoder's label scores from experiments/teacher_label_logits.py): no teacher model in the run;
  the task attaches the logits to the batches (ClassificationTask.attach_teacher)."""
  d = config.distill
  if d.teacher or tuple(d.teachers):
    raise ValueError("set distill.teacher_logits or distill.teacher(s), not both.")
  if d.student_init != "fresh":
    raise ValueError("distill.teacher_logits brings no teacher weights to cut layers from; set "
                     "distill.student_init=fresh (config.model, its layers, is the student).")
  params, s_cfg = _student(config, [], num_labels=num_labels, rng=rng)
  s_cfg = _run_settings(s_cfg, config)
  weights = losses_lib.check_loss_weights(d.losses.to_dict())
  if losses_lib.required_outputs(weights) & {"hidden_states", "attentions"}:
    raise ValueError(f"distill.teacher_logits serve logit losses only; drop the hidden-state and "
                     f"attention terms from distill.losses {sorted(weights)}.")
  family = registry.get_family(config.model.family)
  return DistillSetup(model=family.classifier(s_cfg), params=params, model_cfg=s_cfg,
                      teacher_models=(), teacher_cfgs=(), aux=(), weights=weights,
                      family=config.model.family, cached=True)


# ----------------------------------------------------------------------------- teacher, then student


def teacher_finished(run_dir: str | os.PathLike) -> bool:
  """True when a teacher run dir holds a finished run: exported best params and its result.json."""
  return store_lib.has_exported_params(run_dir) and (pathlib.Path(run_dir) / "result.json").is_file()


def run_with_teacher(config, runner: Callable[[Any], dict], *,
                     teacher_config: Callable[[Any], Any] | None = None,
                     train_missing_teacher: bool = False) -> dict:
  """Distils as `config` says, fine-tuning the teacher first when its run dir is not finished.

  A teacher dir that holds no run at all (often a typo in distill.teacher) is refused unless
  `train_missing_teacher`; a started but unfinished teacher run is resumed (with a message).

  Args:
    config: a distillation run config (configs/common.py; distill.teacher or distill.teachers).
    runner: run config -> result record (`research.train.run`).
    teacher_config: student config -> the teacher's fine-tuning config (configs/common.py
      `teacher_config`); needed only when the teacher is not trained yet.
    train_missing_teacher: fine-tune a teacher whose dir holds no run (else FileNotFoundError).

  Returns:
    The student's result record.
  """
  if not is_distillation(config):
    raise ValueError("run_with_teacher: config names no teacher; set distill.teacher (or use "
                     "experiments/finetune.py for a plain fine-tuning run).")
  missing = [p for p in teacher_dirs(config) if not teacher_finished(p)]
  if missing and tuple(config.distill.teachers):
    raise FileNotFoundError(f"teacher run dir(s) {missing} hold no finished run; fine-tune each "
                            "teacher of distill.teachers with experiments/finetune.py first.")
  if missing:
    if teacher_config is None:
      raise FileNotFoundError(f"teacher run dir {missing[0]!r} holds no finished run; fine-tune it "
                              "first (experiments/finetune.py) or fix distill.teacher.")
    t_config = teacher_config(config)
    started = _has_run(missing[0])
    train_missing_teacher = train_missing_teacher or bool(
        config.distill.get("train_missing_teacher", False))
    if not started and not train_missing_teacher:
      raise FileNotFoundError(
          f"teacher {missing[0]!r} has no run (distill.teacher); fix the path, or pass "
          f"--train_missing_teacher (experiments/distill.py) to fine-tune that teacher first.")
    what = "resuming its unfinished run" if started else "fine-tuning it first"
    print(f"teacher {missing[0]!r} is not trained: {what} ({t_config.name}), then the student",
          file=sys.stderr, flush=True)
    runner(t_config)
  return runner(config)


def _has_run(run_dir: str | os.PathLike) -> bool:
  """True when a run dir holds any trace of a run (its fingerprint, checkpoints or exports)."""
  p = pathlib.Path(run_dir)
  return p.is_dir() and any((p / n).exists() for n in ("fingerprint.json", "checkpoints", "best",
                                                        "result.json"))

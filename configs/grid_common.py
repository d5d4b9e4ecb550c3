"""Defaults shared by the domain grids (configs/bfsi.py, pharma.py, legal.py).

Methods are data: `g.method_defs.<name>` says what one table row trains — `run` (run-config
overrides: mask rule, loss weights, student layers, lr/epochs), `teachers` (method names whose runs
it distils from, in this task and seed) and `is_teacher`. research/grid.py only reads these entries.
Knobs shared by several methods (`g.methods_cfg.alpha`, ...) are FieldReferences, so
`--config.methods_cfg.alpha=0.7` changes every method that uses it.
"""

import ml_collections
from ml_collections import FieldReference

from configs import common


def _knobs(g: ml_collections.ConfigDict) -> dict[str, FieldReference]:
  """The shared method knobs as references (g.methods_cfg.<name> sets them)."""
  refs = {
      "last_k": FieldReference(2),
      "head_only_lr": FieldReference(2e-3),
      "head_only_epochs": FieldReference(8.0),
      "bitfit_lr": FieldReference(2e-3),
      "lora_lr": FieldReference(1e-3),
      # 3-layer student: every other teacher layer (DistilBERT init); the 2-layer student.
      "student_layers": FieldReference((0, 2, 4), field_type=tuple),
      "student_layers_2": FieldReference((0, 5), field_type=tuple),
      "alpha": FieldReference(0.5),        # weight of the soft-target term; 1 - alpha on labels
      "temperature": FieldReference(2.0),
      "hidden_weight": FieldReference(1.0),
      "attn_weight": FieldReference(1.0),
      # Student layer i matches teacher layer layer_map[i] (0-based).
      "layer_map": FieldReference((1, 3, 5), field_type=tuple),
      "kd_epochs": FieldReference(4.0),
  }
  g.methods_cfg = ml_collections.ConfigDict()
  for k, ref in refs.items():
    g.methods_cfg[k] = ref
  return refs


def _method(run: dict, teachers: tuple[str, ...] = (), is_teacher: bool = False):
  return ml_collections.ConfigDict({"run": run, "teachers": teachers, "is_teacher": is_teacher})


def _kd(m: dict[str, FieldReference], losses: dict, *, layers=None, **distill) -> dict:
  """Run overrides of a student cut from the teacher's layers (DistilBERT-style init)."""
  return {"distill": {"student_init": "layers",
                      "student_layers": layers if layers is not None else m["student_layers"],
                      "temperature": m["temperature"], "losses": losses, **distill},
          "train": {"epochs": m["kd_epochs"]}}


def method_defs(m: dict[str, FieldReference]) -> ml_collections.ConfigDict:
  """Every grid method: one named entry each (a new table row = one entry here)."""
  alpha = m["alpha"]
  soft = {"ce": 1 - alpha, "kd_kl": alpha}
  teacher = ("finetune_full",)
  return ml_collections.ConfigDict({
      "finetune_full": _method({"mask": {"rule": "full"}}, is_teacher=True),
      "head_only": _method({"mask": {"rule": "head_only"}, "optim": {"lr": m["head_only_lr"]},
                            "train": {"epochs": m["head_only_epochs"]}}),
      "finetune_last_k": _method({"mask": {"rule": "last_k", "k": m["last_k"]}}),
      "bitfit": _method({"mask": {"rule": "bitfit"}, "optim": {"lr": m["bitfit_lr"]}}),
      "lora": _method({"mask": {"rule": "lora"}, "optim": {"lr": m["lora_lr"]}}),
      # The control every KD row is read against: cut from the fine-tuned teacher like the KD
      # students (same layers, same epochs), trained on ground truth only — the teacher's soft
      # targets are the one difference.
      "control_teacher_init": _method(_kd(m, {"ce": 1.0}), teacher),
      # The student's size from the *pretrained* encoder (fresh head), ground truth only: what a
      # small model gets without any teacher, initialisation included.
      "control_pretrained_init": _method({"model": {"layers": m["student_layers"]}}),
      "kd_soft": _method(_kd(m, soft), teacher),
      # Soft targets only (alpha = 1): no ground-truth term (the init still saw the labels).
      "kd_soft_only": _method(_kd(m, {"ce": 0.0, "kd_kl": 1.0}), teacher),
      "kd_soft_2layer": _method(_kd(m, soft, layers=m["student_layers_2"]), teacher),
      "kd_hidden_attn": _method(_kd(m, {"ce": 1 - alpha, "kd_kl": alpha,
                                        "hidden_mse": m["hidden_weight"],
                                        "attn_kl": m["attn_weight"]},
                                    layer_map=m["layer_map"]), teacher),
      # The teacher's argmax labels as the only targets (hard-label KD).
      "kd_teacher_labels": _method(_kd(m, {"labels_only": 1.0}), teacher),
      "kd_multi_teacher": _method(_kd(m, {"ce": 1 - alpha, "multi_kl": alpha},
                                      teacher_weights=(0.5, 0.5)),
                                  ("finetune_full", "finetune_last_k")),
  })


def grid_config(domain: str) -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.domain = domain
  g.results_dir = f"results/{domain}"        # result records + tables (committed)
  g.runs_dir = f"runs/compare/{domain}"      # checkpoints (not committed)
  g.seeds = (0, 1, 2)
  # Run order (a grid cut short still has the central comparison); the table orders rows itself.
  g.methods = ("finetune_full", "control_teacher_init", "kd_soft", "control_pretrained_init",
               "kd_soft_only", "head_only", "finetune_last_k", "kd_soft_2layer",
               "kd_teacher_labels", "kd_hidden_attn", "kd_multi_teacher", "bitfit", "lora")
  g.tasks = []
  # The run config every cell starts from (configs/common.py), then the task's, then the method's.
  g.run = common.base_config()
  g.run.model.dtype = "float32"     # every committed table trained in f32; bf16: results/bench/cpu_gap.md
  g.run.model.pooling = "mean"
  g.method_defs = method_defs(_knobs(g))

  de = g.data_efficiency = ml_collections.ConfigDict()
  de.enabled = True
  de.tasks = ()
  de.fractions = (0.05, 0.1, 0.25, 0.5, 1.0)
  de.seeds = (0,)
  # Series name -> the method its runs use (the student's teacher is the series' teacher).
  de.series = ml_collections.ConfigDict(
      {"teacher": "finetune_full", "control": "control_teacher_init", "student": "kd_soft",
       "control_pretrained": "control_pretrained_init"})

  # One benchmark pass per table after the grid (research/latency.py): every shape compiled, then
  # `rounds` interleaved rounds sharing iters / throughput_iters; p50 = median of round medians.
  g.latency = ml_collections.ConfigDict(
      {"iters": 50, "warmup": 5, "throughput_batch": 64, "throughput_iters": 10, "seq_len": 64,
       "rounds": 5})
  # What a finished cell keeps on disk (research/checkpoints/store.prune_run): its best params and
  # HF export always; the final params (keep_final); the last full training state with optimizer
  # moments (keep_optimizer, 3x the params' size for AdamW), else deleted.
  g.disk = ml_collections.ConfigDict({"keep_final": True, "keep_optimizer": False})
  return g


def task(name: str, finetune: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A grid task whose data, optimiser and training settings are its fine-tuning config's.

  Args:
    name: the task's name in the table and in cell names.
    finetune: the task's configs/finetune_<task>.py config (one source of truth per task).
  """
  t = ml_collections.ConfigDict()
  t.name = name
  t.run = ml_collections.ConfigDict({s: finetune[s].to_dict() for s in ("data", "optim", "train")})
  return t


def short_recipe(g, task, *, lr: float = 2e-4):
  """The recipe that fits a domain grid in about an hour on 2 CPU cores (DESIGN budget).

  One epoch for every fine-tune and student (two for the cheap head-only probe) at MiniLM's higher
  learning rate; every method gets the same data passes, so the comparison stays like for like.
  """
  task.run.train.epochs = 1.0
  task.run.optim.lr = lr
  g.methods_cfg.kd_epochs = 1.0
  g.methods_cfg.head_only_epochs = 2.0


# The methods a learning-rate sweep trains (one per family: fine-tune, same-init control, student;
# research/sweep.py reads them) and the rates it tries beside the task's own.
SWEEP_METHODS = ("finetune_full", "control_teacher_init", "kd_soft")
SWEEP_LRS = (5e-5, 1e-4, 2e-4)


def sweep_variant(g, task, arg: str, methods: tuple[str, ...] = SWEEP_METHODS) -> bool:
  """`<grid>:<task>:lr=<x>`: the grid's sweep cells at one learning rate — seed 0, `methods`,
  results under results/<domain>/sweep/<task>_lr<x>/ (judged on validation by research/sweep.py).
  Students distil from the grid's own seed-0 teacher (train it first: the main grid), so a
  student's rate is chosen against the teacher the table uses. Returns whether `arg` asked."""
  if not arg.startswith(f"{task.name}:lr="):
    return False
  lr = float(arg.split("=", 1)[1])
  if "optim" not in task.run:
    task.run.optim = ml_collections.ConfigDict()
  task.run.optim.lr = lr
  task.method_lr = ml_collections.ConfigDict()  # the sweep tries `lr` on every method
  g.tasks = [task]
  g.seeds = (0,)
  g.methods = methods
  main_runs = g.runs_dir  # the grid's own runs: its seed-0 teacher at the task's rate
  for m in g.method_defs:  # every method (--config.methods may pick others than `methods`)
    spec = g.method_defs[m]
    if "optim" in spec.run and "lr" in spec.run.optim:  # a method with its own rate: swept too
      spec.run.optim.lr = lr
    if spec.teachers:  # a student keeps the grid's teacher: only the student's rate varies
      dirs = tuple(f"{main_runs}/{task.name}/{t}/seed0" for t in spec.teachers)
      spec.run.distill.teacher = dirs[0] if len(dirs) == 1 else ""
      spec.run.distill.teachers = dirs if len(dirs) > 1 else ()
      spec.teachers = ()
  g.data_efficiency.enabled = False
  g.results_dir = f"results/{g.domain}/sweep/{task.name}_lr{lr:g}"
  g.runs_dir = f"runs/sweep/{g.domain}/{task.name}_lr{lr:g}"
  return True

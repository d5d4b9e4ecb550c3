"""Defaults shared by the domain grids (configs/bfsi.py, pharma.py, legal.py)."""

import ml_collections


def grid_config(domain: str) -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.domain = domain
  g.results_dir = f"results/{domain}"        # result records + tables (committed)
  g.runs_dir = f"runs/compare/{domain}"      # checkpoints (not committed)
  g.seeds = (0, 1, 2)
  # Run order (a grid cut short still has the central comparison); the table orders rows itself.
  g.methods = ("finetune_full", "head_only", "finetune_last_k", "small_labels_only", "kd_soft",
               "kd_soft_2layer", "kd_labels_only", "kd_hidden_attn", "kd_multi_teacher", "bitfit",
               "lora")
  g.tasks = []
  # Overrides applied to every run config (configs/common.py fields).
  g.run = ml_collections.ConfigDict()
  g.run.model = ml_collections.ConfigDict({"dtype": "float32", "pooling": "mean"})  # no AMX here: bf16 was 1.3x slower

  m = g.methods_cfg = ml_collections.ConfigDict()
  m.last_k = 2
  m.head_only_lr = 2e-3
  m.head_only_epochs = 8.0
  m.bitfit_lr = 2e-3
  m.lora_lr = 1e-3
  m.student_layers = (0, 2, 4)   # 3-layer student: every other teacher layer (DistilBERT init)
  m.student_layers_2 = (0, 5)    # 2-layer student
  m.alpha = 0.5                  # weight of the soft-target term; 1 - alpha on the labels
  m.temperature = 2.0
  m.hidden_weight = 1.0
  m.attn_weight = 1.0
  m.layer_map = (1, 3, 5)        # student layer i matches teacher layer layer_map[i] (0-based)
  m.kd_epochs = 4.0

  de = g.data_efficiency = ml_collections.ConfigDict()
  de.enabled = True
  de.tasks = ()
  de.fractions = (0.05, 0.1, 0.25, 0.5, 1.0)
  de.seeds = (0,)

  g.latency = ml_collections.ConfigDict(
      {"iters": 50, "warmup": 5, "throughput_batch": 64, "throughput_iters": 10, "seq_len": 64})
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

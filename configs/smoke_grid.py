"""Smoke grid: the comparison job on a tiny random encoder and synthetic data (about a minute, CPU).

Exercises the whole compare path (teacher first, a fine-tuning baseline, a small labels-only model,
a distilled student, latency, report) in seconds per cell; tests/test_compare.py kills and resumes it.

Command:
  python -m experiments.compare --config configs/smoke_grid.py \
      --config.results_dir=/tmp/smoke_grid --config.runs_dir=/tmp/smoke_grid_runs
"""

import ml_collections

from configs import grid_common
from configs import smoke


def get_config(arg: str = ""):
  del arg
  g = grid_common.grid_config("smoke")
  g.results_dir = "runs/smoke_grid/results"
  g.runs_dir = "runs/smoke_grid/runs"
  g.seeds = (0,)
  g.methods = ("finetune_full", "head_only", "control_pretrained_init", "control_teacher_init",
               "kd_soft")
  # configs/smoke.py's model and data, with a 4-layer "teacher" so 2-layer students can be cut.
  r = g.run
  r.model.source = ""
  r.model.random_init = True
  r.model.overrides.update(
      {"num_layers": 4, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
       "vocab_size": 128})
  base = smoke.get_config()
  base.train.max_steps = 6
  base.train.eval_every = 6
  base.train.checkpoint_every = 6
  g.tasks = [grid_common.task("synthetic", base)]
  m = g.methods_cfg
  m.student_layers = (0, 2)      # 2 of the 4 layers (the controls and kd_* students)
  m.student_layers_2 = (0, 3)
  m.layer_map = (1, 3)
  g.data_efficiency.enabled = False
  g.latency = ml_collections.ConfigDict(
      {"iters": 2, "warmup": 1, "throughput_batch": 4, "throughput_iters": 2, "seq_len": 16})
  return g

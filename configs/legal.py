"""Legal grid: UNFAIR-ToS (CLAUDETTE, LexGLUE document split), binary unfair-clause detection.

Command:
  python -m experiments.compare --config configs/legal.py
"""

from configs import grid_common


def get_config(arg: str = ""):
  del arg
  g = grid_common.grid_config("legal")
  g.tasks = [grid_common.task(
      "claudette_tos_binary", "claudette_tos", "binary",
      data={"max_length": 128, "buckets": (32, 64, 128), "batch_size": 32},
      optim={"lr": 1e-4}, train={"epochs": 4.0, "best_metric": "macro_f1"})]
  g.seeds = (0,)
  g.data_efficiency.enabled = False
  return g

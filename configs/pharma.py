"""Pharma/medical grid: NICTA-PIBOSO sentence roles in medical abstracts (6 classes).

Command:
  python -m experiments.compare --config configs/pharma.py
  python -m experiments.compare --config configs/pharma.py --config.seeds='(0,)'
"""

from configs import finetune_nicta_piboso
from configs import grid_common


def get_config(arg: str = ""):
  del arg
  g = grid_common.grid_config("pharma")
  g.tasks = [grid_common.task("nicta_piboso", finetune_nicta_piboso.get_config())]
  g.seeds = (0,)
  g.data_efficiency.enabled = False
  return g

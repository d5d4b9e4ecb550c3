"""Pharma/medical grid: NICTA-PIBOSO sentence roles in medical abstracts (6 classes).

Command:
  python -m experiments.compare --config configs/pharma.py
  python -m experiments.compare --config configs/pharma.py --config.seeds='(0,)'

Recipe: grid_common.short_recipe (1 epoch, lr 2e-4; head-only 2 epochs) so that the whole grid
fits in about an hour on 2 CPU cores; one seed.
"""

from configs import finetune_nicta_piboso
from configs import grid_common


def get_config(arg: str = ""):
  del arg
  g = grid_common.grid_config("pharma")
  t = grid_common.task("nicta_piboso", finetune_nicta_piboso.get_config())
  grid_common.short_recipe(g, t)
  g.tasks = [t]
  g.seeds = (0,)
  g.data_efficiency.enabled = False
  return g

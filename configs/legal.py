"""Legal grid: UNFAIR-ToS (CLAUDETTE, LexGLUE document split), binary unfair-clause detection.

Command:
  python -m experiments.compare --config configs/legal.py

Recipe: grid_common.short_recipe (1 epoch, lr 2e-4; head-only 2 epochs) so that the whole grid
fits in about an hour on 2 CPU cores; one seed.
"""

from configs import finetune_claudette_tos
from configs import grid_common


def get_config(arg: str = ""):
  del arg
  g = grid_common.grid_config("legal")
  t = grid_common.task("claudette_tos_binary", finetune_claudette_tos.get_config())
  grid_common.short_recipe(g, t)
  g.tasks = [t]
  g.seeds = (0,)
  g.data_efficiency.enabled = False
  return g

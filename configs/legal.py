"""Legal grid: UNFAIR-ToS (CLAUDETTE, LexGLUE document split), binary unfair-clause detection.

Command:
  python -m experiments.compare --config configs/legal.py
"""

from configs import finetune_claudette_tos
from configs import grid_common


def get_config(arg: str = ""):
  del arg
  g = grid_common.grid_config("legal")
  g.tasks = [grid_common.task("claudette_tos_binary", finetune_claudette_tos.get_config())]
  g.seeds = (0,)
  g.data_efficiency.enabled = False
  return g

"""Fine-tune all-MiniLM-L6-v2 on NICTA-PIBOSO (medical abstract sentences, PICO-style classes).

Launch:
  python -m experiments.finetune --config configs/finetune_nicta_piboso.py \
      --config.workdir=runs/nicta_piboso/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_nicta_piboso.py --config.workdir=runs/nicta_piboso/full"""
  c = common.base_config()
  c.name = "nicta_piboso"
  c.workdir = "runs/nicta_piboso/full"
  c.tags.domain = "pharma"
  c.tags.task = "nicta_piboso"
  c.data.name = "nicta_piboso"
  c.data.config = "default"
  c.data.max_length = 128
  c.data.buckets = (32, 64, 128)
  c.optim.lr = 1e-4
  c.train.epochs = 4.0
  return c

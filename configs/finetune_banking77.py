"""Fine-tune all-MiniLM-L6-v2 on Banking77 (77 intents).

Launch:
  python -m experiments.finetune --config configs/finetune_banking77.py \
      --config.workdir=runs/banking77/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_banking77.py --config.workdir=runs/banking77/full"""
  c = common.base_config()
  c.name = "banking77"
  c.workdir = "runs/banking77/full"
  c.tags.domain = "bfsi"
  c.tags.task = "banking77"
  c.data.name = "banking77"
  c.data.config = "default"
  c.data.max_length = 64
  c.data.buckets = (16, 32, 64)  # median query: 13 tokens
  c.optim.lr = 2e-4
  c.train.epochs = 4.0
  return c

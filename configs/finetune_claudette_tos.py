"""Fine-tune all-MiniLM-L6-v2 on CLAUDETTE terms of service, binary (potentially unfair clause).

Unfair clauses are the minority class, so the best checkpoint is chosen by macro-F1.

Launch:
  python -m experiments.finetune --config configs/finetune_claudette_tos.py \
      --config.workdir=runs/claudette_tos_binary/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_claudette_tos.py --config.workdir=runs/claudette_tos_binary/full"""
  c = common.base_config()
  c.name = "claudette_tos_binary"
  c.workdir = "runs/claudette_tos_binary/full"
  c.tags.domain = "legal"
  c.tags.task = "claudette_tos_binary"
  c.data.name = "claudette_tos"
  c.data.config = "binary"
  c.data.max_length = 128
  c.data.buckets = (32, 64, 128)
  c.optim.lr = 1e-4
  c.train.epochs = 4.0
  c.train.best_metric = "macro_f1"
  return c

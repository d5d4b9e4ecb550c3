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
  return common.task_config(
      "claudette_tos_binary",
      domain="legal",
      dataset="claudette_tos",
      dataset_config="binary",
      max_length=128,
      buckets=(32, 64, 128),
      lr=1e-4,
      epochs=4.0,
      best_metric="macro_f1")

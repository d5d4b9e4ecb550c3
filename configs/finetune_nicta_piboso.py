"""Fine-tune all-MiniLM-L6-v2 on NICTA-PIBOSO (medical abstract sentences, PICO-style classes).

Launch:
  python -m experiments.finetune --config configs/finetune_nicta_piboso.py \
      --config.workdir=runs/nicta_piboso/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_nicta_piboso.py --config.workdir=runs/nicta_piboso/full"""
  return common.task_config(
      "nicta_piboso",
      domain="pharma",
      dataset="nicta_piboso",
      dataset_config="default",
      max_length=128,
      buckets=(32, 64, 128),
      lr=1e-4,
      epochs=4.0,
      best_metric="macro_f1")  # 6 classes, imbalanced: the task's primary metric

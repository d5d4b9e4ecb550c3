"""Fine-tune all-MiniLM-L6-v2 on Financial PhraseBank (AllAgree, 3 classes).

Launch:
  python -m experiments.finetune --config configs/finetune_phrasebank_allagree.py \
      --config.workdir=runs/phrasebank_allagree/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_phrasebank_allagree.py --config.workdir=runs/phrasebank_allagree/full"""
  return common.task_config(
      "phrasebank_allagree",
      domain="bfsi",
      dataset="financial_phrasebank",
      dataset_config="allagree",
      max_length=96,
      buckets=(32, 64, 96),
      lr=1e-4,
      epochs=4.0)

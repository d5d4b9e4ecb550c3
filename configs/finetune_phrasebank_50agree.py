"""Fine-tune all-MiniLM-L6-v2 on Financial PhraseBank (50Agree, 3 classes; noisier labels).

Launch:
  python -m experiments.finetune --config configs/finetune_phrasebank_50agree.py \
      --config.workdir=runs/phrasebank_50agree/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_phrasebank_50agree.py --config.workdir=runs/phrasebank_50agree/full"""
  return common.task_config(
      "phrasebank_50agree",
      domain="bfsi",
      dataset="financial_phrasebank",
      dataset_config="50agree",
      max_length=96,
      buckets=(32, 64, 96),
      lr=1e-4,
      epochs=4.0)

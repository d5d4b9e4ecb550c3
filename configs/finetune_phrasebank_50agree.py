"""Fine-tune all-MiniLM-L6-v2 on Financial PhraseBank (50Agree, 3 classes; noisier labels).

Launch:
  python -m experiments.finetune --config configs/finetune_phrasebank_50agree.py \
      --config.workdir=runs/phrasebank_50agree/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_phrasebank_50agree.py --config.workdir=runs/phrasebank_50agree/full"""
  c = common.base_config()
  c.name = "phrasebank_50agree"
  c.workdir = "runs/phrasebank_50agree/full"
  c.tags.domain = "bfsi"
  c.tags.task = "phrasebank_50agree"
  c.data.name = "financial_phrasebank"
  c.data.config = "50agree"
  c.data.max_length = 96
  c.data.buckets = (32, 64, 96)
  c.optim.lr = 1e-4
  c.train.epochs = 4.0
  return c

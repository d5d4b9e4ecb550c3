"""Fine-tune all-MiniLM-L6-v2 on Financial PhraseBank (AllAgree, 3 classes).

Launch:
  python -m experiments.finetune --config configs/finetune_phrasebank_allagree.py \
      --config.workdir=runs/phrasebank_allagree/full --config.mask.rule=full
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/finetune_phrasebank_allagree.py --config.workdir=runs/phrasebank_allagree/full"""
  c = common.base_config()
  c.name = "phrasebank_allagree"
  c.workdir = "runs/phrasebank_allagree/full"
  c.tags.domain = "bfsi"
  c.tags.task = "phrasebank_allagree"
  c.data.name = "financial_phrasebank"
  c.data.config = "allagree"
  c.data.max_length = 96
  c.data.buckets = (32, 64, 96)
  c.optim.lr = 1e-4
  c.train.epochs = 4.0
  return c

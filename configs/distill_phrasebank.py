"""Distil a 3-layer student from the fine-tuned MiniLM-L6 teacher on PhraseBank (AllAgree).

The student copies teacher layers (0, 2, 4) (DistilBERT init) and trains on
0.5 · CE(labels) + 0.5 · T² · KL(teacher || student) at temperature T = 2. When
runs/phrasebank_allagree/full holds no run, --train_missing_teacher fine-tunes the teacher there
first with configs/finetune_phrasebank_allagree.py's settings (full fine-tuning); without it the
command refuses (a typo'd teacher path never trains a new teacher silently).

Launch:
  python -m experiments.distill --config configs/distill_phrasebank.py --train_missing_teacher \
      [--config.workdir=runs/phrasebank_allagree/kd_soft --config.distill.temperature=4]
"""

import ml_collections

from configs import finetune_phrasebank_allagree


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.distill --config configs/distill_phrasebank.py"""
  c = finetune_phrasebank_allagree.get_config()  # config.model/data/optim: the teacher's run
  c.name = "phrasebank_allagree_kd_soft"
  c.workdir = "runs/phrasebank_allagree/kd_soft"
  c.tags.method = "kd_soft"
  c.distill.teacher = "runs/phrasebank_allagree/full"
  c.distill.student_init = "layers"
  c.distill.student_layers = (0, 2, 4)
  c.distill.losses = ml_collections.ConfigDict({"ce": 0.5, "kd_kl": 0.5})
  c.distill.temperature = 2.0
  return c

"""Distil a student from a fine-tuned teacher (fine-tuning the teacher first if it is not there).

  python -m experiments.distill --config configs/distill_phrasebank.py \
      [--config.distill.losses.kd_kl=0.7 --config.workdir=runs/x ...]

Both runs resume from their latest checkpoint when rerun. The student's result record is printed and
written to <workdir>/result.json (schema: docs/ARCHITECTURE.md).
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import common
from research import distill
from research import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Distillation config file.",
                                          lock_config=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  result = distill.run_with_teacher(_CONFIG.value, train.run, teacher_config=common.teacher_config)
  summary = {k: result[k] for k in ("method", "task", "params_total", "train_seconds",
                                    "train_flops", "teacher_flops", "labeled_examples",
                                    "teachers", "run_dir")}
  summary["test"] = {k: v for k, v in result["metrics"]["test"].items() if k != "per_class"}
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)

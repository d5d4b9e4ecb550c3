"""Distil a student from a fine-tuned teacher (fine-tuning the teacher first if it is not there).

  python -m experiments.distill --config configs/distill_phrasebank.py \
      [--config.distill.losses.kd_kl=0.7 --config.workdir=runs/x ...]

A teacher dir that holds no run is refused (a typo in distill.teacher must not train a new
teacher); --train_missing_teacher fine-tunes it first. Both runs resume from their latest checkpoint
when rerun. The student's result record is printed and written to <workdir>/result.json (schema:
docs/ARCHITECTURE.md).
"""

import json

from absl import flags
from ml_collections import config_flags

from configs import common
from experiments import cli
from research import distill
from research import train
from research.data import local_text

_CONFIG = config_flags.DEFINE_config_file("config", None, "Distillation config file.",
                                          lock_config=True)
_TRAIN_TEACHER = flags.DEFINE_bool(
    "train_missing_teacher", False,
    "Fine-tune the teacher first when distill.teacher holds no run (else refuse).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard a student run in config.workdir that "
                               "was trained with other settings, and start over.")


def main(argv):
  del argv
  config = _CONFIG.value
  local_text.name_after_folder(config, cli.config_overrides())  # names of a task's config
  student_workdir = config.workdir

  def runner(c):  # --overwrite applies to the student's run only, never to its teacher's
    return train.run(c, overwrite=_OVERWRITE.value and c.workdir == student_workdir)

  result = distill.run_with_teacher(config, runner, teacher_config=common.teacher_config,
                                    train_missing_teacher=_TRAIN_TEACHER.value)
  summary = {k: result[k] for k in ("method", "task", "params_total", "train_seconds",
                                    "train_flops", "teacher_flops", "labeled_examples",
                                    "teachers", "run_dir")}
  summary["test"] = {k: v for k, v in result["metrics"]["test"].items() if k != "per_class"}
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)

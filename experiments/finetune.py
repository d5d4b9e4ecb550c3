"""Fine-tune a classifier: trains, evaluates, writes the run directory (config.workdir).

  python -m experiments.finetune --config configs/finetune_phrasebank_allagree.py \
      [--config.mask.rule=last_k --config.mask.k=2 --config.workdir=runs/x ...]

Rerunning the same command resumes from the run's latest checkpoint. The result record is printed
and written to <workdir>/result.json (schema: docs/ARCHITECTURE.md).
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from research import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  result = train.run(_CONFIG.value)
  summary = {k: result[k] for k in ("method", "task", "params_total", "params_trainable",
                                    "train_seconds", "examples_seen", "run_dir")}
  summary["test"] = {k: v for k, v in result["metrics"]["test"].items() if k != "per_class"}
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)

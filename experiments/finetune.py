"""Fine-tune a classifier: trains, evaluates, writes the run directory (config.workdir).

  python -m experiments.finetune --config configs/finetune_phrasebank_allagree.py \
      [--config.mask.rule=last_k --config.mask.k=2 --config.workdir=runs/x ...]

Rerunning the same command resumes from the run's latest checkpoint; a workdir trained with other
settings stops with the differing fields (pass --overwrite to discard that run). The result record
is printed and written to <workdir>/result.json (schema: docs/ARCHITECTURE.md).
"""

import json

from absl import flags
from ml_collections import config_flags

from experiments import cli
from research import train
from research.data import local_text

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Discard a run in config.workdir that was "
                               "trained with other settings, and start over.")


def main(argv):
  del argv
  config = _CONFIG.value
  local_text.name_after_folder(config, cli.config_overrides())  # names of a task's config
  result = train.run(config, overwrite=_OVERWRITE.value)
  summary = {k: result[k] for k in ("method", "task", "params_total", "params_trainable",
                                    "train_seconds", "examples_seen", "run_dir")}
  summary["test"] = {k: v for k, v in result["metrics"]["test"].items() if k != "per_class"}
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)

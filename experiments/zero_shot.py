"""Zero-/k-shot evaluation of decoder LLMs: models × tasks × k cells -> results/llm_zero_shot/.

  python -m experiments.zero_shot --config configs/zero_shot.py [--config.shots='(0,)' ...]

Rerunning resumes: finished cells with the same settings fingerprint are skipped.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from research import zero_shot

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)


def main(argv):
  del argv
  records = zero_shot.run(_CONFIG.value)
  print(open(f"{_CONFIG.value.results_dir}/table.md").read())
  print(f"{len(records)} cells in {_CONFIG.value.results_dir}/cells")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)

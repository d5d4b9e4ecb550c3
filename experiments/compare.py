"""Fine-tune vs distill: runs a domain grid, benchmarks each model shape, writes the table.

  python -m experiments.compare                                  # BFSI PhraseBank, 1 seed (~15 min CPU)
  python -m experiments.compare --config configs/bfsi.py         # full BFSI grid -> results/bfsi
  python -m experiments.compare --config configs/legal.py --only kd_soft
  python -m experiments.compare --config configs/bfsi.py --config.seeds='(0,)'

Finished cells are skipped, so an interrupted run resumes where it stopped. A cell whose record
was trained with other settings than its config now is stale: the job stops and names it, and
--rerun_stale reruns it.
"""

import pathlib

from absl import flags
from ml_collections import config_flags

from experiments import cli
from research import compare

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "bfsi.py") + ":quick",
    "Grid config (configs/<domain>.py[:arg]).", lock_config=True)
_ONLY = flags.DEFINE_list("only", [], "Run only cells whose name contains one of these.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Skip training; rebuild tables from records.")
_RERUN_STALE = flags.DEFINE_bool("rerun_stale", False, "Rerun cells whose record was trained with "
                                 "other settings than the grid's config now.")


def main(argv):
  del argv
  compare.main(_CONFIG.value, only=_ONLY.value, report_only=_REPORT_ONLY.value,
               rerun_stale=_RERUN_STALE.value)


if __name__ == "__main__":
  cli.run(main)

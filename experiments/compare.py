"""Fine-tune vs distill: runs a domain grid, benchmarks each model shape, writes the table.

  python -m experiments.compare                                  # BFSI PhraseBank, 1 seed (~15 min CPU)
  python -m experiments.compare --config configs/bfsi.py         # full BFSI grid -> results/bfsi
  python -m experiments.compare --config configs/legal.py --only kd_soft
  python -m experiments.compare --config configs/bfsi.py --config.seeds='(0,)'
  python -m experiments.compare --config configs/own_data.py --config.data.manual_dir=<folder>
  python -m experiments.compare --config configs/own_data.py --data <folder>     # the same
  python -m experiments.compare --config configs/legal.py --report_only --retime # latency again

Your own data (configs/own_data.py, README "Your own data"): a folder with train.csv and test.csv
(columns text,label) gets data checks, two baselines, a recipe sized to it and the full grid.

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
_DATA = flags.DEFINE_string("data", None, "Your data folder: the same as "
                            "--config.data.manual_dir (configs/own_data.py).")
_RETIME = flags.DEFINE_bool("retime", False, "Time every model shape of the table again, in one "
                            "pass (latency.json), even if timed before.")
_RERUN_STALE = flags.DEFINE_bool("rerun_stale", False, "Rerun cells whose record was trained with "
                                 "other settings than the grid's config now.")


def main(argv):
  del argv
  grid = _CONFIG.value
  if _DATA.value is not None:
    if "manual_dir" not in grid.get("data", {}):
      raise ValueError("--data is for configs/own_data.py (its data.manual_dir); this grid reads "
                       "its datasets from its task configs.")
    grid.data.manual_dir = _DATA.value
  if "manual_dir" in grid.get("data", {}) and not grid.data.manual_dir:
    raise ValueError("configs/own_data.py needs your data folder: --data <folder> (or "
                     "--config.data.manual_dir=<folder>) with train.csv and test.csv in it.")
  compare.main(grid, only=_ONLY.value, report_only=_REPORT_ONLY.value,
               rerun_stale=_RERUN_STALE.value, retime=_RETIME.value)


if __name__ == "__main__":
  cli.run(main)

"""Your own data: the standard comparison grid on a folder of CSV / TSV / JSONL files.

Command (a folder with train.csv and test.csv, columns text,label; validation.csv optional):
  python -m experiments.compare --config configs/own_data.py --config.data.manual_dir=<folder>
  python -m experiments.compare --config configs/own_data.py --data <folder>        # the same
  ... --config.data.columns='text=sentence,label=intent' --config.task_name=complaints \
      --config.best_metric=macro_f1      # other column names, a task name, an imbalanced task

What it does (README "Your own data"): checks the data (class counts, duplicates within and
across splits, label noise, long texts; a user's train overlapping their test stops the job with
the fix), adds a majority-class and a TF-IDF baseline row, sizes the recipe to the training set
(epochs from its size, the learning rate by a short sweep of the teacher on validation), trains
every method of configs/grid_common.py on it, times every model shape in one pass and writes the
table, plots and summary to results_dir. Rerunning resumes.
"""

import ml_collections
from ml_collections import FieldReference

from configs import common
from configs import grid_common

# Run-config fields the own-data task sets (the rest is grid_common's run config).
_TRAIN_FIELDS = ("epochs", "max_steps", "eval_every", "best_metric")


def get_config(arg: str = ""):
  del arg
  g = grid_common.grid_config("own_data")
  g.task_name = "my_task"          # the table's task name and the cells' prefix
  g.best_metric = "accuracy"       # checkpoint selection and the sweep's metric (or macro_f1)
  # The user's folder and columns; the task's data section reads them (references).
  g.data = ml_collections.ConfigDict({
      "manual_dir": FieldReference(""), "columns": FieldReference(""),
      "max_length": FieldReference(128), "data_dir": FieldReference("")})
  g.results_dir = "runs/own_data/" + g.get_ref("task_name") + "/results"
  g.runs_dir = "runs/own_data/" + g.get_ref("task_name") + "/runs"
  g.seeds = (0,)
  g.data_efficiency.enabled = False

  base = common.base_config()
  t = ml_collections.ConfigDict()
  t.name = g.get_ref("task_name")
  t.run = ml_collections.ConfigDict({
      "data": {"name": "local_text", "config": g.data.get_ref("columns"),
               "manual_dir": g.data.get_ref("manual_dir"),
               "data_dir": g.data.get_ref("data_dir"),
               "max_length": g.data.get_ref("max_length"), "buckets": (32, 64, 128)},
      "optim": {"lr": 2e-4},
      "train": {**{k: base.train[k] for k in _TRAIN_FIELDS},
                "best_metric": g.get_ref("best_metric")},
  })
  g.tasks = [t]

  # Recipe sized to the data (research/compare.py size_recipe): epochs = target_examples / rows,
  # clipped to [min_epochs, max_epochs]; lr: the teacher for sweep_steps steps (0: one epoch) at
  # each of lrs, best on validation. One lr in lrs: no sweep.
  g.recipe = ml_collections.ConfigDict({
      "auto": True, "target_examples": 4000, "min_epochs": 1, "max_epochs": 4,
      "lrs": (1e-4, 2e-4, 4e-4), "sweep_steps": 100})
  # Data checks before training (research/data/checks.py); on_overlap: refuse | warn.
  g.checks = ml_collections.ConfigDict({"enabled": True, "on_overlap": "refuse",
                                        "baselines": True})
  return g

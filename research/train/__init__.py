"""Training: one loop for every task and model family, split by concern.

  optim.py     AdamW + schedule on the mask's trainable leaves
  parallel.py  multi-process start-up, the data mesh, placing state and batches
  step.py      TrainState; the one pure per-device train step (jit over a mesh, or pmap); eval step
  flops.py     training FLOPs (XLA cost analysis per compiled step, analytic fallback)
  setup.py     config checks; model / student, mask and task of a run
  record.py    metrics.jsonl, atomic JSON, git sha, fingerprints of result-changing settings
  workdir.py   the run directory's guards: the settings it was trained with, a lock, SIGINT/SIGTERM
  loop.py      run(config) -> run directory + result record
"""

from research.checkpoints.store import has_exported_params, load_run_params
from research.train.loop import enable_compile_cache, evaluate, make_plan, run
from research.train.optim import SCHEDULES, make_optimizer, make_schedule
from research.train.parallel import (DATA_AXIS, PARALLEL, make_mesh, maybe_initialize_distributed,
                                     place_state, unplace_state)
from research.train.record import git_sha
from research.train.setup import check_config
from research.train.step import (TrainState, create_train_state, make_eval_step, make_train_step,
                                 train_step)

__all__ = [
    "DATA_AXIS", "PARALLEL", "SCHEDULES", "TrainState", "check_config", "create_train_state",
    "enable_compile_cache", "evaluate", "git_sha", "has_exported_params", "load_run_params",
    "make_eval_step", "make_mesh", "make_optimizer", "make_plan", "make_schedule", "make_train_step",
    "maybe_initialize_distributed", "place_state", "run", "train_step", "unplace_state",
]

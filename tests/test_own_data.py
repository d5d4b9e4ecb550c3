"""Your own data in one command (configs/own_data.py): checks, baselines, recipe, grid, disk."""

import json
import pathlib
import subprocess
import sys

import pytest

from configs import common
from configs import own_data
from research import compare
from research import grid as grid_lib
from research import report

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = {"neg": ["awful", "broken", "late", "rude"], "pos": ["great", "quick", "lovely", "kind"]}


def _folder(path: pathlib.Path, n_train=64, n_test=16, leak=0) -> pathlib.Path:
  """train.csv + test.csv (text,label); `leak` test rows copied from train."""
  path.mkdir(parents=True, exist_ok=True)

  def rows(n, start):
    return [(f"{WORDS[l][i % 4]} service number {start + i}", l)
            for i, l in ((i, "neg" if i % 2 else "pos") for i in range(n))]
  train, test = rows(n_train, 0), rows(n_test, 1000)
  test[:leak] = train[:leak]
  for name, part in (("train.csv", train), ("test.csv", test)):
    (path / name).write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in part))
  return path


def _grid(tmp_path, folder):
  """configs/own_data.py with a tiny random encoder (MiniLM's tokenizer) and a short grid."""
  g = own_data.get_config()
  g.lock()
  g.data.manual_dir = str(folder)
  g.data.data_dir = str(tmp_path / "tfds")
  g.data.max_length = 16
  g.task_name = "tiny"
  g.results_dir = str(tmp_path / "results")
  g.runs_dir = str(tmp_path / "runs")
  g.methods = ("finetune_full", "control_pretrained_init")  # KD cells: tests/test_compare.py
  r = g.run
  r.compile_cache_dir = str(tmp_path / "xla")  # the sweep's and the grid's runs share programs
  r.model.source = common.MINILM
  r.model.random_init = True
  r.model.overrides.update({"num_layers": 4, "hidden_size": 32, "num_heads": 2,
                            "intermediate_size": 64, "vocab_size": 0})
  r.data.batch_size = 16
  r.data.eval_batch_size = 32
  g.tasks[0].run.data.buckets = (16,)
  m = g.methods_cfg
  m.student_layers = (0, 2)
  m.student_layers_2 = (0, 3)
  m.layer_map = (1, 3)
  g.recipe.target_examples = 40      # 58 training rows -> 1 epoch
  g.recipe.lrs = (3e-3,)             # no sweep here (test_the_lr_sweep_reads_validation_only)
  g.recipe.sweep_steps = 2
  g.latency.update({"iters": 2, "warmup": 1, "throughput_batch": 4, "throughput_iters": 2,
                    "seq_len": 16, "rounds": 2})
  return g


def test_size_epochs_follows_the_training_set():
  recipe = own_data.get_config().recipe
  assert compare.size_epochs(100, recipe) == recipe.max_epochs
  assert compare.size_epochs(2000, recipe) == 2.0
  assert compare.size_epochs(10 ** 6, recipe) == recipe.min_epochs


def test_own_data_config_reads_the_folder_and_names_the_task(tmp_path):
  g = own_data.get_config()
  g.lock()
  g.data.manual_dir, g.data.columns, g.task_name = str(tmp_path), "text=s,label=y", "claims"
  cell = grid_lib.cells(g)[0]
  d = cell.config.data
  assert (d.name, d.config, d.manual_dir) == ("local_text", "text=s,label=y", str(tmp_path))
  assert cell.name == "claims/finetune_full/seed0" and cell.config.tags.task == "claims"
  assert g.results_dir == "runs/own_data/claims/results"


def test_one_command_on_a_tiny_csv_folder(tmp_path, capsys):
  g = _grid(tmp_path, _folder(tmp_path / "data"))
  paths = compare.main(g)
  out = capsys.readouterr().out
  results = pathlib.Path(g.results_dir)
  rows = {r["method"]: r for r in report.aggregate(report.load_records(results))}
  assert set(rows) == {"finetune_full", "control_pretrained_init", "majority_class", "tfidf_logreg"}
  assert rows["tfidf_logreg"]["kind"] == "baseline"
  table = paths["table.md"].read_text()
  assert "| tfidf_logreg | baseline |" in table and "interleaved rounds" in table
  checks = json.loads((results / "data_checks.json").read_text())
  assert checks["errors"] == [] and checks["user_splits"] == ["test", "train"]
  assert checks["used"]["class_counts"]["validation"] == {"neg": 3, "pos": 3}
  recipe = json.loads((results / "recipe.json").read_text())["tiny"]
  assert (recipe["epochs"], recipe["lr"], recipe["n_train"]) == (1.0, 3e-3, 58)
  teacher = json.loads(grid_lib.cell_file(results, "tiny/finetune_full/seed0").read_text())
  assert teacher["config"]["train"]["epochs"] == 1.0 and teacher["config"]["optim"]["lr"] == 3e-3
  # Disk: best params and final params kept, training checkpoints (optimizer state) deleted.
  run = pathlib.Path(g.runs_dir) / "tiny/finetune_full/seed0"
  assert (run / "best").is_dir() and any((run / "final").iterdir())
  assert not [p for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
  assert "disk: " in out and "GB of run directories" in out
  # One latency pass over the table's shapes.
  cache = json.loads((results / "latency.json").read_text())
  assert len({v["pass"] for v in cache.values()}) == 1
  assert all(v["rounds"] == 2 for v in cache.values())


def test_the_lr_sweep_reads_validation_only(tmp_path, monkeypatch):
  g = _grid(tmp_path, _folder(tmp_path / "data"))
  g.recipe.lrs = (3e-3, 1e-3)
  task, cfg = g.tasks[0], grid_lib.task_config(g, g.tasks[0])
  lr, scores = compare.sweep_lr(g, task, cfg, pathlib.Path(g.results_dir), steps=2)
  assert set(scores) == {"0.003", "0.001"} and scores[f"{lr:g}"] == max(scores.values())
  sweep = [json.loads(p.read_text()) for p in (pathlib.Path(g.results_dir) / "lr_sweep" /
                                                "cells").glob("*.json")]
  assert sorted(r["config"]["optim"]["lr"] for r in sweep) == [1e-3, 3e-3]
  assert all(r["steps"] == 2 for r in sweep)
  # The scores are the runs' best validation metric; their test metrics play no part.
  for r in sweep:
    assert scores[f"{r['config']['optim']['lr']:g}"] == r["metrics"]["best_validation"]["accuracy"]
  assert not (pathlib.Path(g.runs_dir) / "lr_sweep").exists()  # its runs are deleted
  # The sweep's records stay out of the table (not under results_dir/cells).
  assert not (pathlib.Path(g.results_dir) / "cells").exists()
  # Rerunning resumes: nothing is trained again.
  monkeypatch.setattr(compare.grid_lib.train, "run", lambda c: pytest.fail("retrained"))
  assert compare.sweep_lr(g, task, cfg, pathlib.Path(g.results_dir), steps=2) == (lr, scores)


def test_overlapping_user_splits_stop_before_training_with_the_fix(tmp_path):
  folder = _folder(tmp_path / "data", leak=4)
  cmd = [sys.executable, "-m", "experiments.compare", "--config", "configs/own_data.py",
         "--data", str(folder), f"--config.data.data_dir={tmp_path / 'tfds'}",
         f"--config.results_dir={tmp_path / 'results'}", f"--config.runs_dir={tmp_path / 'runs'}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  err = proc.stderr.strip().splitlines()[-1]
  assert err.startswith("error: data checks my_task: 4 of test's 16 rows (25%) also appear in train")
  assert "--config.data.columns='dedupe=strict'" in err and "--config.checks.on_overlap=warn" in err
  assert (tmp_path / "results" / "data_checks.md").exists()
  assert not (tmp_path / "runs").exists()  # nothing trained


def test_no_folder_is_one_line_naming_the_flag(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.compare", "--config",
                         "configs/own_data.py", f"--config.results_dir={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: configs/own_data.py needs your data folder: --data <folder>")

"""The comparison job on the smoke grid: cell order, SIGKILL mid-grid + resume, the written table."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import smoke_grid
from research import grid as grid_lib
from research import report
from tests.processes import sigkill_when

ROOT = pathlib.Path(__file__).resolve().parents[1]
CELLS = ("synthetic/finetune_full/seed0", "synthetic/head_only/seed0",
         "synthetic/control_pretrained_init/seed0", "synthetic/control_teacher_init/seed0",
         "synthetic/kd_soft/seed0")


def test_cells_put_teachers_before_students(tmp_path):
  g = smoke_grid.get_config()
  g.runs_dir = str(tmp_path)
  g.methods = ("kd_multi_teacher", "kd_soft", "head_only", "finetune_last_k", "finetune_full")
  names = [c.name.split("/")[1] for c in grid_lib.cells(g)]
  assert sorted(names) == sorted(g.methods)
  for student, teacher in (("kd_soft", "finetune_full"), ("kd_multi_teacher", "finetune_full"),
                           ("kd_multi_teacher", "finetune_last_k")):
    assert names.index(teacher) < names.index(student), names
  kd = {c.method: c for c in grid_lib.cells(g)}["kd_soft"]
  assert kd.teachers == ("synthetic/finetune_full/seed0",)
  assert kd.config.distill.teacher == str(tmp_path / "synthetic/finetune_full/seed0")


def test_cells_reject_unknown_methods_and_missing_teachers():
  g = smoke_grid.get_config()
  g.methods = ("finetune_full", "kd_sofft")
  with pytest.raises(ValueError, match=r"unknown method 'kd_sofft'"):
    grid_lib.cells(g)
  g.methods = ("kd_soft",)
  with pytest.raises(ValueError, match=r"needs teacher cell synthetic/finetune_full/seed0.*add "
                                       r"'finetune_full' to grid.methods"):
    grid_lib.cells(g)


def _records(cells_dir: pathlib.Path) -> dict[str, dict]:
  return {p.name: json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))}


def test_killed_grid_resumes_only_the_missing_cells(tmp_path):
  results, runs = tmp_path / "results", tmp_path / "runs"
  cmd = [sys.executable, "-m", "experiments.compare", "--config", "configs/smoke_grid.py",
         f"--config.results_dir={results}", f"--config.runs_dir={runs}"]
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),  # the rerun compiles the same
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  cells_dir = results / "cells"
  log = tmp_path / "killed.log"
  with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the grid
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
  sigkill_when(proc, lambda: bool(list(cells_dir.glob("*.json"))), log.read_text, timeout=300,
               what="the first finished cell")
  before = _records(cells_dir)
  # The teacher runs first; the grid was cut short.
  assert "synthetic__finetune_full__seed0.json" in before and len(before) < len(CELLS)
  run_results = {name: pathlib.Path(r["run_dir"]) / "result.json" for name, r in before.items()}
  mtimes = {name: p.stat().st_mtime_ns for name, p in run_results.items()}

  rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  n_done = len(before)
  assert (f"grid smoke: {len(CELLS)} cells, {n_done} finished, {len(CELLS) - n_done} to run"
          in rerun.stdout + rerun.stderr)

  after = _records(cells_dir)
  assert sorted(r["cell"] for r in after.values()) == sorted(CELLS)
  for name, old in before.items():  # not rerun: same record (latency added) and run directory
    new = after[name]
    assert new["latency"] and not old["latency"]
    assert {k: v for k, v in new.items() if k != "latency"} == {
        k: v for k, v in old.items() if k != "latency"}
    assert run_results[name].stat().st_mtime_ns == mtimes[name]

  by_method = {r["method"]: r for r in after.values()}
  assert by_method["finetune_full"]["is_teacher"]
  assert by_method["finetune_full"]["model"]["num_layers"] == 4
  assert by_method["control_pretrained_init"]["model"]["num_layers"] == 2
  assert by_method["control_pretrained_init"]["init"] == "random"  # the smoke model has no weights
  control = by_method["control_teacher_init"]
  # The same-init control: cut from the teacher like kd_soft, no teacher pass in its loss.
  assert control["init"] == "teacher_layers" and control["model"]["num_layers"] == 2
  assert control["kind"] == "finetune" and control["teacher_flops"] == 0
  assert len(control["metrics"]["test"]["predictions"]) == control["metrics"]["test"]["num_examples"]
  assert by_method["kd_soft"]["kind"] == "distill" and by_method["kd_soft"]["teacher_flops"] > 0
  assert by_method["kd_soft"]["model"]["num_layers"] == 2

  with open(results / "table.csv") as f:
    rows = list(csv.DictReader(f))
  assert set(report.REQUIRED_COLUMNS) <= set(rows[0])
  assert sorted(r["method"] for r in rows) == sorted(by_method)
  table_md = (results / "table.md").read_text()
  assert all(m in table_md for m in by_method)


def test_domain_configs_build_every_cell():
  """Each committed domain grid builds all of its cells; pharma/legal use the 1-epoch recipe."""
  from configs import bfsi, legal, pharma
  from research import grid as grid_lib
  for mod, task in ((bfsi, "banking77"), (pharma, "nicta_piboso"), (legal, "claudette_tos_binary")):
    g = mod.get_config()
    cells = grid_lib.cells(g)
    assert {c.method for c in cells if c.task == task} == {
        m for m in g.methods if grid_lib.applies(g, m, task)}, mod.__name__
    # A method with `tasks` runs on those only: the decoder-teacher file is PhraseBank's.
    assert {c.task for c in cells if c.method == "kd_soft_smollm2_encoder"} <= {
        "phrasebank_allagree"}
    if mod is not bfsi:
      full = next(c for c in cells if c.method == "finetune_full")
      assert full.config.train.epochs == 1.0 and full.config.optim.lr == 2e-4
      kd = next(c for c in cells if c.method == "kd_soft")
      assert kd.config.train.epochs == 1.0


def test_the_same_init_control_and_soft_only_differ_from_kd_soft_only_in_their_losses():
  """control_teacher_init and kd_soft_only are kd_soft's cell with other loss weights (same
  teacher-cut init, epochs, data): the soft targets are the one difference a KD row shows."""
  from configs import bfsi
  g = bfsi.get_config("phrasebank")
  by = {c.method: c for c in grid_lib.cells(g) if c.seed == 0 and not c.config.tags.series}
  k = by["kd_soft"].config.to_dict()
  assert k["distill"].pop("losses") == {"ce": 0.5, "kd_kl": 0.5}
  for key in ("name", "workdir", "tags"):
    k.pop(key)
  for method, losses in (("kd_soft_only", {"ce": 0.0, "kd_kl": 1.0}),
                         ("control_teacher_init", {"ce": 1.0})):
    a = by[method].config.to_dict()
    assert a["distill"].pop("losses") == losses
    for key in ("name", "workdir", "tags"):
      a.pop(key)
    assert a == k, method
    assert by[method].teachers == by["kd_soft"].teachers


def test_data_efficiency_cells_skip_the_main_runs_full_label_point():
  from configs import bfsi
  from research import grid as grid_lib
  g = bfsi.get_config("phrasebank")
  g.seeds = (0,)
  g.data_efficiency.seeds = (0, 1)
  names = {c.name for c in grid_lib.cells(g)}
  assert "phrasebank_allagree/student/frac0.05/seed0" in names
  assert "phrasebank_allagree/teacher/frac0.05/seed0" in names
  assert not any(n.endswith("frac1/seed0") for n in names)   # the main cells stand for 100%
  assert "phrasebank_allagree/student/frac1/seed1" in names  # seed 1 has no main cells here
  by_name = {c.name: c.config for c in grid_lib.cells(g)}
  # Teacher and control at 5% train the full set's step budget; main cells and students need not.
  assert by_name["phrasebank_allagree/teacher/frac0.05/seed0"].train.steps_from_full_data
  assert by_name["phrasebank_allagree/control/frac0.05/seed0"].train.steps_from_full_data
  assert not by_name["phrasebank_allagree/student/frac0.05/seed0"].train.steps_from_full_data
  assert not by_name["phrasebank_allagree/finetune_full/seed0"].train.steps_from_full_data


def test_a_new_method_is_one_config_entry():
  """A table row = one method entry: the grid builds its cell with no code change."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  g = smoke_grid.get_config()
  g.method_defs.kd_reverse = ml_collections.ConfigDict({
      "run": {"distill": {"student_init": "layers", "student_layers": (0, 3),
                          "losses": {"ce": 0.5, "kd_reverse_kl": 0.5}}},
      "teachers": ("finetune_full",), "is_teacher": False})
  g.methods = ("finetune_full", "kd_reverse")
  cell = {c.method: c for c in grid_lib.cells(g)}["kd_reverse"]
  assert cell.teachers == ("synthetic/finetune_full/seed0",)
  assert cell.config.distill.losses.to_dict() == {"ce": 0.5, "kd_reverse_kl": 0.5}
  assert cell.config.distill.student_layers == (0, 3)
  assert cell.config.distill.teacher.endswith("synthetic/finetune_full/seed0")


def test_shared_method_knobs_reach_every_method_that_uses_them():
  g = smoke_grid.get_config()
  g.methods_cfg.alpha = 0.8
  by = {c.method: c.config for c in grid_lib.cells(g)}
  assert by["kd_soft"].distill.losses.to_dict() == pytest.approx({"ce": 0.2, "kd_kl": 0.8})


def test_the_llm_grid_reads_every_kd_row_against_a_control_of_the_same_cut():
  """configs/llm_bfsi.py: decoder methods as data in the same grid; each student is cut from its
  seed's SFT teacher and differs from the same-init control only in its losses (and data)."""
  from configs import llm_bfsi
  g = llm_bfsi.get_config()
  cells = grid_lib.cells(g)
  assert {c.method for c in cells} == set(g.methods) and {c.seed for c in cells} == {0, 1, 2}
  by = {(c.method, c.seed): c for c in cells}
  assert by[("sft_full", 0)].config.tags.is_teacher and g.latency is None
  assert by[("sft_norm_only", 0)].config.mask.rule == "bitfit"
  control = by[("control_teacher_init", 1)].config.to_dict()
  assert control["distill"]["teacher"].endswith("phrasebank_allagree/sft_full/seed1")
  seq = by[("seq_kd_smollm2", 1)].config
  assert seq.data.answers.endswith("smollm2_sft_full_seed1.jsonl")  # the seed's own teacher
  def cut(d):  # what makes the student: its init, model and optimiser (not its losses)
    d = dict(d["distill"], model=d["model"], optim=d["optim"])
    return {k: v for k, v in d.items() if k not in ("losses", "on_policy", "cache_top_k")}
  for method in ("tok_kl", "tok_jsd", "tok_reverse_kl", "gkd_on_policy", "seq_kd_smollm2"):
    assert cut(by[(method, 1)].config.to_dict()) == cut(control), method

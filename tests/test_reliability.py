"""Nothing silently wrong (issue 14): fingerprints, data checks, config checks, recoverable failures,
one-line errors and quiet logs, on the smoke configs."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from configs import common
from configs import smoke
from configs import smoke_grid
from research import compare
from research import data as data_lib
from research import distill
from research import grid as grid_lib
from research import train
from research.checkpoints import store as store_lib
from research.data import local_text
from research.train import loop
from research.train import record as record_lib
from tests.processes import killed_run_script, sigkill_when

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(workdir, **overrides) -> ml_collections.ConfigDict:
  c = smoke.get_config()
  c.workdir = str(workdir)
  for key, value in overrides.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


def _short(workdir, **overrides):
  """A 4-step smoke run: checkpoints at 2 and 4, validation at 2 and 4."""
  kw = dict(train__max_steps=4, train__eval_every=2, train__checkpoint_every=2)
  kw.update(overrides)
  return _config(workdir, **kw)


def _train_losses(workdir) -> dict[int, float]:
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if rec["split"] == "train" and "event" not in rec:
        out[rec["step"]] = rec["loss"]
  return out


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  return env


def _stderr_lines(text: str) -> list[str]:
  """stderr without progress-bar redraws."""
  return [l for l in text.replace("\r", "\n").splitlines()
          if l.strip() and "step/s" not in l and "it/s" not in l and "cell/s" not in l
          and not l.startswith(("smoke:", "grid "))]


# ----------------------------------------------------------------------------- 1. fingerprints


def test_rerun_with_changed_settings_stops_naming_the_fields(tmp_path):
  first = train.run(_short(tmp_path))
  assert first["fingerprint"] == record_lib.fingerprint(_short(tmp_path))
  meta = store_lib.read_metadata(tmp_path / "checkpoints")
  assert meta["fingerprint"] == first["fingerprint"]

  changed = _short(tmp_path, optim__lr=1e-3)
  changed.seed = 1
  with pytest.raises(ValueError, match=r"other settings \(optim\.lr 0\.003 → 0\.001, seed 0 → 1\)"
                                       r".*new config\.workdir.*--overwrite"):
    train.run(changed)
  longer = _short(tmp_path, train__max_steps=8)  # would splice two lr schedules
  with pytest.raises(ValueError, match=r"train\.max_steps 4 → 8"):
    train.run(longer)
  assert json.loads((tmp_path / "result.json").read_text())["config"]["optim"]["lr"] == 3e-3

  # Fields that cannot change the result do not count: the finished run is reused.
  again = _short(tmp_path, train__log_every=3)
  again.name = "renamed"
  assert train.run(again)["metrics"]["test"] == first["metrics"]["test"]

  redone = train.run(changed, overwrite=True)
  assert redone["config"]["optim"]["lr"] == 1e-3 and redone["seed"] == 1
  assert redone["fingerprint"] != first["fingerprint"]
  assert sorted(_train_losses(tmp_path)) == [1, 2, 3, 4]


def test_fresh_start_ignores_an_old_export(tmp_path):
  """An export left by an earlier attempt (no checkpoints) must not compete with a new run's."""
  first = train.run(_short(tmp_path))
  fake = store_lib.BestExport(tmp_path, "accuracy")  # an old "perfect" export at step 99
  params, meta = store_lib.load_best(tmp_path)
  fake.update(99, {"accuracy": 1.0}, params, meta["model"])
  fake.wait()
  fake.close()
  for name in ("checkpoints", "result.json", "fingerprint.json"):
    p = tmp_path / name
    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
  again = train.run(_short(tmp_path))
  assert again["metrics"]["best_validation"] == first["metrics"]["best_validation"]
  assert again["metrics"]["best_validation"]["step"] != 99


def _fake_grid(tmp_path) -> ml_collections.ConfigDict:
  g = smoke_grid.get_config()
  g.results_dir = str(tmp_path / "results")
  g.runs_dir = str(tmp_path / "runs")
  return g


def _fake_runner(calls):
  def runner(c):
    calls.append(c.name)
    best = pathlib.Path(c.workdir) / "best" / "1"  # a "teacher ready" export
    best.mkdir(parents=True, exist_ok=True)
    return {"config": json.loads(c.to_json()), "method": c.tags.method}
  return runner


def test_grid_names_stale_cells_and_reruns_them_only_when_asked(tmp_path):
  g = _fake_grid(tmp_path)
  calls = []
  grid_lib.run_grid(g, runner=_fake_runner(calls))
  assert len(calls) == len(g.methods)
  calls.clear()
  assert grid_lib.run_grid(g, runner=_fake_runner(calls)) and calls == []

  g.methods_cfg.alpha = 0.99  # only kd_soft uses it
  with pytest.raises(ValueError, match=r"1 cell\(s\) were trained with other settings.*"
                                       r"synthetic/kd_soft/seed0.*distill\.losses.*--rerun_stale"):
    grid_lib.run_grid(g, runner=_fake_runner(calls))
  assert calls == []
  records = grid_lib.run_grid(g, runner=_fake_runner(calls), rerun_stale=True)
  assert calls == ["synthetic/kd_soft/seed0"]
  kd = next(r for r in records if r["method"] == "kd_soft")
  assert kd["config"]["distill"]["losses"]["kd_kl"] == 0.99

  # A teacher trained with other settings makes its students stale too.
  g.method_defs.finetune_full.run.optim = ml_collections.ConfigDict({"lr": 1e-3})
  assert set(grid_lib.stale_cells(g)) == {"synthetic/finetune_full/seed0",
                                          "synthetic/control_teacher_init/seed0",
                                          "synthetic/kd_soft/seed0"}


def test_a_record_of_an_old_method_name_is_adopted_only_with_the_same_settings(tmp_path):
  g = _fake_grid(tmp_path)
  calls = []
  grid_lib.run_grid(g, runner=_fake_runner(calls))
  cells = pathlib.Path(g.results_dir) / "cells"
  new = cells / "synthetic__control_pretrained_init__seed0.json"
  old = cells / "synthetic__small_labels_only__seed0.json"
  new.rename(old)
  calls.clear()
  grid_lib.run_grid(g, runner=_fake_runner(calls))
  assert calls == [] and new.exists() and not old.exists()
  assert json.loads(new.read_text())["renamed_from"] == "small_labels_only"
  # Other settings under the old name: not adopted, the cell is trained.
  record = json.loads(new.read_text())
  record["config"]["optim"]["lr"] = 1.0
  old.write_text(json.dumps(record))
  new.unlink()
  grid_lib.run_grid(g, runner=_fake_runner(calls))
  assert calls == ["synthetic/control_pretrained_init/seed0"] and old.exists()


@pytest.mark.parametrize("domain", ["bfsi", "pharma", "legal"])
def test_committed_grid_records_are_cells_of_the_grid_with_its_settings(domain):
  """Every committed record is a cell of its domain grid, trained with that cell's settings now
  (records written before fingerprints existed compare by their embedded config); records of
  other settings live in archive_v1/, outside the table."""
  import importlib
  g = importlib.import_module(f"configs.{domain}").get_config()
  results = ROOT / g.results_dir
  by_file = {grid_lib.result_path(results, c).name: c for c in grid_lib.cells(g)}
  for path in sorted((results / "cells").glob("*.json")):
    assert path.name in by_file, f"{path.name} is no cell of configs/{domain}.py"
    cell = by_file[path.name]
    assert grid_lib.cell_diff(json.loads(path.read_text()), cell) == {}, cell.name


# ----------------------------------------------------------------------------- 2. stale datasets


def test_changed_raw_files_rebuild_the_dataset(tmp_path, raw_data_root):
  raw = tmp_path / "raw"
  shutil.copytree(raw_data_root / "financial_phrasebank", raw)
  kw = dict(manual_dir=raw, data_dir=tmp_path / "tfds")
  split = "train+validation+test"
  before = data_lib.load("financial_phrasebank", "allagree", split, **kw)
  path = raw / "Sentences_AllAgree.txt"
  lines = path.read_text(encoding="latin-1").split("\n")
  path.write_text("\n".join(l.replace("@neutral", "@negative") for l in lines), encoding="latin-1")
  after = data_lib.load("financial_phrasebank", "allagree", split, **kw)
  assert sorted(e["id"] for e in after) == sorted(e["id"] for e in before)
  assert any(e["label"] == 1 for e in before)
  assert all(e["label"] != 1 for e in after)  # the corrected file: no "neutral" left


# ----------------------------------------------------------------------------- 3. degenerate data


def _local_config(workdir, folder, **overrides):
  """A tiny random encoder with MiniLM's tokenizer on a local_text folder; 2 steps."""
  c = _config(workdir, train__max_steps=2, train__eval_every=2, train__checkpoint_every=2,
              **overrides)
  c.model.source = common.MINILM
  c.model.overrides.vocab_size = 0  # the tokenizer's
  c.data.name = "local_text"
  c.data.config = ""
  c.data.manual_dir = str(folder)
  c.data.data_dir = str(workdir / "tfds")
  return c


def _write_csv(folder: pathlib.Path, rows, name="train.csv") -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / name).write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
  return folder


def test_one_class_is_refused(tmp_path):
  folder = _write_csv(tmp_path / "one", [(f"sentence number {i}", "yes") for i in range(30)])
  with pytest.raises(ValueError, match=r"has 1 class\(es\); classification needs at least 2"):
    train.run(_local_config(tmp_path / "run", folder))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_tiny_splits_missing_classes_and_case_duplicates_are_recorded(tmp_path, capfd):
  rows = [(f"good thing {i}", "pos") for i in range(4)] + [
      (f"bad thing {i}", "neg") for i in range(4)] + [("great thing", "Pos"), ("fine thing", "Pos")]
  folder = _write_csv(tmp_path / "tiny", rows)
  record = train.run(_local_config(tmp_path / "run", folder))
  warnings = " | ".join(record["warnings"])
  assert "differ only in case" in warnings and "'Pos'" in warnings and "'pos'" in warnings
  assert "the validation split has only 1 example(s)" in warnings
  assert "the test split has only 1 example(s)" in warnings
  assert "has no example of class(es)" in warnings
  assert "WARNING: " in capfd.readouterr().err
  on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
  assert on_disk["warnings"] == record["warnings"]


# ----------------------------------------------------------------------------- 4. config values


@pytest.mark.parametrize("overrides,match", [
    (dict(optim__lr=-3e-3), r"optim\.lr=-0\.003; use a learning rate > 0"),
    (dict(optim__lr=0.0), r"optim\.lr=0\.0"),
    (dict(data__batch_size=0), r"data\.batch_size=0"),
    (dict(data__eval_batch_size=0), r"data\.eval_batch_size=0"),
    (dict(data__max_length=0), r"data\.max_length=0"),
    (dict(data__max_length=4096, data__buckets=(16,)), r"data\.max_length=4096 exceeds .*512"),
    (dict(data__buckets=(16, 64)), r"data\.buckets=\(16, 64\).*max_length=16"),
    (dict(model__dtype="float16"), r"model\.dtype='float16'"),
    (dict(model__pooling="max"), r"model\.pooling='max'"),
    (dict(distill__student_init="copy"), r"distill\.student_init='copy'"),
    (dict(optim__warmup_ratio=1.5), r"optim\.warmup_ratio=1\.5"),
    (dict(train__keep_checkpoints=0), r"train\.keep_checkpoints=0"),
])
def test_bad_values_fail_before_compute_naming_the_field(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train.run(_config(tmp_path, **overrides))
  assert not (tmp_path / "checkpoints").exists()


def test_model_vocab_smaller_than_the_tokenizer_is_named(tmp_path):
  rows = [(f"word{i} text", "a" if i % 2 else "b") for i in range(40)]
  c = _local_config(tmp_path / "run", _write_csv(tmp_path / "data", rows))
  c.model.overrides.vocab_size = 128
  with pytest.raises(ValueError, match=r"token id \d+ but the model's vocab_size is 128"):
    train.run(c)
  assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- 5. missing teacher


def test_missing_teacher_is_refused_unless_asked(tmp_path, capfd):
  calls = []
  runner = lambda c: calls.append(c.workdir) or {"workdir": c.workdir}
  c = _config(tmp_path / "student")
  c.model.overrides.num_layers = 4
  c.distill.teacher = str(tmp_path / "techer")  # a typo
  c.distill.student_layers = (0, 2)
  with pytest.raises(FileNotFoundError, match=r"techer' has no run.*--train_missing_teacher"):
    distill.run_with_teacher(c, runner, teacher_config=common.teacher_config)
  assert calls == []
  distill.run_with_teacher(c, runner, teacher_config=common.teacher_config,
                           train_missing_teacher=True)
  assert calls == [str(tmp_path / "techer"), str(tmp_path / "student")]
  assert "is not trained: fine-tuning it first" in capfd.readouterr().err
  # A started (unfinished) teacher run is resumed without asking.
  calls.clear()
  (tmp_path / "techer").mkdir()
  (tmp_path / "techer" / "fingerprint.json").write_text("{}")
  distill.run_with_teacher(c, runner, teacher_config=common.teacher_config)
  assert calls == [str(tmp_path / "techer"), str(tmp_path / "student")]
  assert "resuming its unfinished run" in capfd.readouterr().err


# ----------------------------------------------------------------------------- 6. NaN stop

SPIKE_RUN = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from configs import smoke
    from research import train
    from research.train import optim

    good = optim.make_schedule  # lr 30 from step 4 on (loss spikes), NaN from step 8
    optim.make_schedule = lambda o, n: lambda s: jnp.where(
        s >= 7, jnp.nan, jnp.where(s >= 3, 30.0, good(o, n)(s)))
    config = smoke.get_config()
    config.workdir = sys.argv[1]
    config.train.checkpoint_every = 2
    config.train.eval_every = 2
    config.optim.grad_clip = 0.0
    try:
      train.run(config)
    except FloatingPointError as e:
      print("STOPPED:", e)
""")


def test_a_diverged_step_is_not_a_good_checkpoint(tmp_path):
  proc = subprocess.run([sys.executable, "-c", SPIKE_RUN, str(tmp_path)], env=_env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = _train_losses(tmp_path)
  assert losses[6] > 100 * losses[1]  # diverged before it went NaN
  assert "Last good checkpoint: step 4" in proc.stdout, proc.stdout[-2000:]
  assert "--config.optim.lr=0.0003 --overwrite" in proc.stdout
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2, 4]
  assert "not checkpointing until it recovers" in proc.stderr
  # The advised rerun works: a lower lr in the same workdir with --overwrite starts over.
  record = train.run(_config(tmp_path, optim__lr=3e-4, train__max_steps=4), overwrite=True)
  assert np.isfinite(record["metrics"]["test"]["accuracy"])


# ----------------------------------------------------------------------------- 7. corrupt checkpoint


def _corrupt(step_dir: pathlib.Path, how: str) -> None:
  if how == "truncated_array":
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "ocdbt.process" in str(p)
             and p.parent.name == "d"]
    assert files, list((step_dir / "state").rglob("*"))
    for f in files:
      f.write_bytes(f.read_bytes()[:20])
  elif how == "missing_manifest":
    for f in (step_dir / "state").rglob("manifest.ocdbt"):
      f.unlink()
  elif how == "garbage_position":
    for f in (step_dir / "data").rglob("*"):
      if f.is_file() and f.name != "commit_success.txt":
        f.write_text("{not json")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> pathlib.Path:
  """The smoke config (12 steps, checkpoints every 4) uninterrupted."""
  ref = tmp_path_factory.mktemp("ref")
  train.run(_config(ref))
  return ref


@pytest.mark.parametrize("how", ["truncated_array", "missing_manifest", "garbage_position"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference_run, how,
                                                                  capfd):
  work = tmp_path / "run"
  shutil.copytree(reference_run, work)
  cfg = _config(work)  # the copy's saved config names the reference workdir: not a result field
  _corrupt(work / "checkpoints" / "12", how)
  (work / "result.json").unlink()
  train.run(cfg)
  err = capfd.readouterr().err
  assert "checkpoint step 12" in err and "trying the previous one" in err, err[-2000:]
  assert list((work / "corrupt_checkpoints").iterdir())[0].name.startswith("12-")
  ref, resumed = _train_losses(reference_run), _train_losses(work)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in range(9, 13)], [ref[s] for s in range(9, 13)],
                             rtol=0, atol=1e-6)


KILLED_AT_10 = killed_run_script(10)


def test_kill_then_corrupt_latest_checkpoint_resumes_from_the_one_before(tmp_path):
  """SIGKILL at step 10 (checkpoints 4 and 8 kept), truncate step 8: the rerun resumes at 4."""
  ref, killed, marker = tmp_path / "ref", tmp_path / "killed", tmp_path / "hanging"
  proc = subprocess.Popen([sys.executable, "-c", KILLED_AT_10, str(ref), str(killed), str(marker)],
                          env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  sigkill_when(proc, lambda: marker.exists() and (killed / "checkpoints" / "8").is_dir(),
               lambda: proc.stdout.read().decode(), timeout=240, what="step 10 of the killed run")
  _corrupt(killed / "checkpoints" / "8", "truncated_array")
  rerun = subprocess.run([sys.executable, "-m", "experiments.finetune", "--config",
                          "configs/smoke.py", f"--config.workdir={killed}"],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "checkpoint step 8" in rerun.stderr and "trying the previous one" in rerun.stderr
  ref_losses, resumed = _train_losses(ref), _train_losses(killed)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in range(5, 13)],
                             [ref_losses[s] for s in range(5, 13)], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- 8. workdir lock


def test_a_busy_workdir_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
  tmp_path.mkdir(exist_ok=True)
  lock = loop.WorkdirLock(str(tmp_path)).acquire()
  try:
    with pytest.raises(RuntimeError, match=rf"in use by pid {os.getpid()} on .*wait for it"):
      train.run(_short(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
  finally:
    lock.release()
  (tmp_path / ".lock").write_text("pid 999999 on elsewhere")  # left by a killed run
  second = loop.WorkdirLock(str(tmp_path)).acquire()
  assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()}")
  second.release()


# ----------------------------------------------------------------------------- 9. SIGINT

SIGINT_RUN = textwrap.dedent("""
    import os, signal, sys
    from research.train import step as step_lib
    make = step_lib.make_train_step
    def make_interrupted(*args, **kw):
      step = make(*args, **kw)
      calls = [0]
      def interrupted(state, batch, aux=None):
        out = step(state, batch, aux)
        calls[0] += 1
        if calls[0] == 6:
          os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 6
        return out
      return interrupted
    step_lib.make_train_step = make_interrupted
    from experiments import cli, finetune
    sys.argv = ["finetune", "--config", "configs/smoke.py", "--config.workdir=" + sys.argv[1]]
    cli.run(finetune.main)
""")


def test_sigint_saves_a_checkpoint_and_the_rerun_resumes_identically(tmp_path, reference_run):
  work = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-c", SIGINT_RUN, str(work)], env=_env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 130, proc.stderr[-3000:]
  lines = _stderr_lines(proc.stderr)
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) <= 3, lines
  assert any("stopped at step 6 of 12" in l and "rerun the same command" in l for l in lines), lines
  assert 6 in [int(s) for s in os.listdir(work / "checkpoints") if s.isdigit()]

  rerun = subprocess.run([sys.executable, "-m", "experiments.finetune", "--config",
                          "configs/smoke.py", f"--config.workdir={work}"], env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  ref, resumed = _train_losses(reference_run), _train_losses(work)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in range(1, 13)], [ref[s] for s in range(1, 13)],
                             rtol=0, atol=1e-6)
  # 12. quiet logs: no library INFO line (absl "I1201 ..." / "INFO:absl") by default.
  info = [l for l in rerun.stderr.splitlines() if l.startswith("INFO") or
          (len(l) > 5 and l[0] == "I" and l[1:5].isdigit())]
  assert info == [], info[:5]


# ----------------------------------------------------------------------------- 10. torn records


def test_a_torn_cell_record_is_named_and_rerun(tmp_path, capsys):
  g = _fake_grid(tmp_path)
  calls = []
  grid_lib.run_grid(g, runner=_fake_runner(calls))
  path = grid_lib.cell_file(pathlib.Path(g.results_dir), "synthetic/head_only/seed0")
  path.write_text(path.read_text()[:50])  # torn
  with pytest.raises(ValueError, match=rf"{path.name} does not parse.*without --report_only"):
    compare.check_records(pathlib.Path(g.results_dir))
  calls.clear()
  grid_lib.run_grid(g, runner=_fake_runner(calls))
  assert calls == ["synthetic/head_only/seed0"]
  assert f"cell record {path} does not parse" in capsys.readouterr().out
  assert json.loads(path.read_text())["method"] == "head_only"
  assert path.with_name(path.name + ".corrupt").exists()


def test_latency_write_back_is_atomic(tmp_path, monkeypatch):
  """compare.attach_latency rewrites cell records through the atomic writer (tmp + rename)."""
  g = _fake_grid(tmp_path)
  results = pathlib.Path(g.results_dir)
  path = grid_lib.cell_file(results, "synthetic/head_only/seed0")
  path.parent.mkdir(parents=True)
  record = {"cell": "synthetic/head_only/seed0", "model": {"num_layers": 2}, "latency": {}}
  path.write_text(json.dumps(record))
  monkeypatch.setattr(compare.latency, "record_shapes", lambda records: {})
  monkeypatch.setattr(compare.latency, "benchmark_missing", lambda *a, **k: {})
  monkeypatch.setattr(compare.latency, "shape_key", lambda m: "k")
  monkeypatch.setattr(compare.latency, "for_shape", lambda cache, key: [{"backend": "cpu"}])
  def torn(*a, **k):  # a kill in the middle of the write
    raise KeyboardInterrupt
  monkeypatch.setattr(compare.record_lib, "write_json", torn)
  monkeypatch.setattr(pathlib.Path, "write_text", lambda self, text: (
      open(self, "w").write(text[:10]), torn()))
  with pytest.raises(KeyboardInterrupt):
    compare.attach_latency([dict(record)], g, results)
  assert json.loads(path.read_text()) == record  # the old record, whole


# ----------------------------------------------------------------------------- 11. one-line errors


def _cli(*args, module="experiments.finetune"):
  return subprocess.run([sys.executable, "-m", module, *args], env=_env(), cwd=ROOT,
                        capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("args,match", [
    (["--config.optim.lrr=1e-3"], "--config.optim.lrr: no such config field 'lrr'"),
    (["--config.optim.lr=-1"], "optim.lr=-1.0; use a learning rate > 0"),
])
def test_cli_user_errors_are_one_line(tmp_path, args, match):
  proc = _cli("--config", "configs/smoke.py", f"--config.workdir={tmp_path}", *args)
  assert proc.returncode == 2
  lines = _stderr_lines(proc.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
  debug = _cli("--config", "configs/smoke.py", f"--config.workdir={tmp_path}", *args, "--debug")
  assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_missing_teacher_is_one_line(tmp_path):
  proc = _cli("--config", "configs/smoke.py", f"--config.workdir={tmp_path / 's'}",
              f"--config.distill.teacher={tmp_path / 'nope'}", module="experiments.distill")
  assert proc.returncode == 2
  lines = _stderr_lines(proc.stderr)
  assert len(lines) == 1 and "has no run" in lines[0] and "--train_missing_teacher" in lines[0]


def test_csv_bom_is_accepted_and_an_unclosed_quote_is_pointed_at(tmp_path):
  path = tmp_path / "train.csv"
  path.write_text("text,label\nhello,a\nbye,b\n", encoding="utf-8-sig")
  assert [r["text"] for _, r in local_text.read_rows(path)] == ["hello", "bye"]
  path.write_text('text,label\nhello,a\n"bye,b\nagain,a\n')
  with pytest.raises(ValueError, match=r"line 3, column 1: a quoted field opens here and never "
                                       r"closes"):
    list(local_text.read_rows(path))


def test_a_student_of_a_retrained_teacher_stops(tmp_path):
  teacher = tmp_path / "teacher"
  train.run(_teacher_config(teacher))
  student = _short(tmp_path / "student")
  student.model.overrides.num_layers = 4
  student.distill.teacher = str(teacher)
  student.distill.student_layers = (0, 2)
  train.run(student)
  retrained = _teacher_config(teacher)
  retrained.optim.lr = 1e-3
  train.run(retrained, overwrite=True)
  with pytest.raises(ValueError,
                     match=r"teacher \S+/teacher \(retrained\) \"\w+\" → \"\w+\".*--overwrite"):
    train.run(student)


def _teacher_config(workdir):
  c = _short(workdir)
  c.model.overrides.num_layers = 4
  return c

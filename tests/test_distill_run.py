"""Distillation runs on the smoke config: a 4-layer teacher (fine-tuned by run_with_teacher), then
students cut from its layers, and the checks that must stop a bad setup before training."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import common
from configs import smoke
from research import distill
from research import train
from research.data import synthetic
from research.tasks import classification

TEACHER_LAYERS = 4
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _student_config(workdir, teacher, *, losses=None, layers=(0, 2),
                    layer_map=()) -> ml_collections.ConfigDict:
  """Smoke values; config.model is the 4-layer teacher, the student is cut from its layers."""
  c = smoke.get_config()
  c.workdir = str(workdir)
  c.model.overrides.num_layers = TEACHER_LAYERS
  c.distill.teacher = str(teacher)
  c.distill.student_layers = tuple(layers)
  c.distill.losses = ml_collections.ConfigDict(losses or {"ce": 0.5, "kd_kl": 0.5})
  c.distill.layer_map = tuple(layer_map)
  c.train.max_steps = 6
  c.train.eval_every = 6
  c.train.checkpoint_every = 6
  return c


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, dict]:
  """run_with_teacher from scratch: fine-tunes the teacher, then distils a 2-layer student."""
  root = tmp_path_factory.mktemp("kd")
  teacher, student = root / "teacher", root / "student"
  record = distill.run_with_teacher(_student_config(student, teacher), train.run,
                                   teacher_config=common.teacher_config,
                                   train_missing_teacher=True)
  return teacher, student, record


@pytest.fixture
def teacher(kd_run) -> pathlib.Path:
  return kd_run[0]


@pytest.fixture
def no_training(monkeypatch):
  """Makes building a train step fail loudly: the run must stop before it."""
  def forbidden(*args, **kw):
    raise AssertionError("training started before the bad distillation setup was rejected")
  monkeypatch.setattr(train, "make_train_step", forbidden)


def test_run_with_teacher_fine_tunes_the_teacher_first(kd_run):
  teacher, _, _ = kd_run
  record = json.loads((teacher / "result.json").read_text())
  assert record["kind"] == "finetune" and record["method"] == "finetune_full"
  assert record["is_teacher"] and record["model"]["num_layers"] == TEACHER_LAYERS
  assert record["config"]["mask"]["rule"] == "full"
  assert record["config"]["distill"]["teacher"] == "" and record["config"]["workdir"] == str(teacher)
  assert distill.teacher_finished(teacher)


def test_soft_target_student_from_teacher_layers(kd_run):
  teacher, student, record = kd_run
  assert record["kind"] == "distill"
  assert record["model"]["num_layers"] == 2
  assert record["teachers"] == [str(teacher)]
  assert record["teacher_flops"] > 0
  # train_flops = the student's own steps + the teacher forward passes.
  assert record["train_flops"] > record["teacher_flops"]
  assert record["labeled_examples"] == 256 and record["unlabeled_examples"] == 0
  assert record["examples_seen"] == 6 * 16
  assert np.isfinite(record["metrics"]["test"]["accuracy"])
  on_disk = json.loads((student / "result.json").read_text())
  assert on_disk["kind"] == "distill" and on_disk["teacher_flops"] == record["teacher_flops"]
  params, cfg = train.load_run_params(student)
  assert cfg.num_layers == 2
  assert sorted(k for k in params["encoder"] if k.startswith("layer_")) == ["layer_0", "layer_1"]


def test_run_with_teacher_skips_a_finished_teacher(teacher, tmp_path):
  calls = []
  runner = lambda c: calls.append(c) or {"workdir": c.workdir}
  config = _student_config(tmp_path / "student", teacher)
  assert distill.run_with_teacher(config, runner, teacher_config=common.teacher_config) == {"workdir": config.workdir}
  assert [c.workdir for c in calls] == [config.workdir]

  calls.clear()  # an unfinished teacher (here: none at all) is fine-tuned first, when asked
  config = _student_config(tmp_path / "student", tmp_path / "new_teacher")
  distill.run_with_teacher(config, runner, teacher_config=common.teacher_config,
                           train_missing_teacher=True)
  assert [c.workdir for c in calls] == [str(tmp_path / "new_teacher"), config.workdir]
  assert not distill.is_distillation(calls[0]) and calls[0].mask.rule == "full"
  assert config.distill.teacher == str(tmp_path / "new_teacher")  # the caller's config unchanged


def test_run_with_teacher_rejects_teachers_it_cannot_train(teacher, tmp_path):
  runner = lambda c: pytest.fail("nothing may run")
  config = _student_config(tmp_path / "student", "")
  config.distill.teachers = (str(teacher), str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="missing.*fine-tune each teacher"):
    distill.run_with_teacher(config, runner, teacher_config=common.teacher_config)
  config = _student_config(tmp_path / "student", tmp_path / "missing")
  config.distill.student_init = "fresh"
  with pytest.raises(ValueError, match="config.model describes the student"):
    distill.run_with_teacher(config, runner, teacher_config=common.teacher_config)


def test_cli_loads_the_phrasebank_config_and_fails_fast(tmp_path):
  missing = tmp_path / "missing_teacher"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.distill", "--config", "configs/distill_phrasebank.py",
       f"--config.distill.teacher={missing}", "--config.distill.student_init=fresh",
       f"--config.workdir={tmp_path / 'student'}"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"teacher '{missing}' is not trained" in proc.stderr, proc.stderr[-2000:]
  assert not missing.exists() and not (tmp_path / "student").exists()


def test_soft_targets_only_uses_no_labels(teacher, tmp_path):
  record = train.run(_student_config(tmp_path, teacher, losses={"kd_kl": 1.0}, layers=(3,)))
  assert record["kind"] == "distill" and record["model"]["num_layers"] == 1
  assert record["labeled_examples"] == 0 and record["unlabeled_examples"] == 256


def test_missing_teacher_dir_fails_before_training(tmp_path, no_training):
  missing = tmp_path / "no_such_teacher"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    train.run(_student_config(tmp_path / "student", missing))
  assert not (tmp_path / "student" / "checkpoints").exists()


def _edit_num_labels(run_dir: pathlib.Path, num_labels: int) -> None:
  """Rewrites the exported best params' model config as if trained on another label set."""
  (meta_file,) = (run_dir / "best").glob("*/meta/metadata")  # store.BestExport's JSON item
  meta = json.loads(meta_file.read_text())
  meta["model"]["config"]["num_labels"] = num_labels
  meta_file.write_text(json.dumps(meta))


def test_teacher_label_count_mismatch_fails_before_training(teacher, tmp_path, no_training):
  other = tmp_path / "teacher_3_labels"
  shutil.copytree(teacher, other)
  _edit_num_labels(other, 3)
  with pytest.raises(ValueError, match=r"predicts 3 labels but the dataset .* has 4"):
    train.run(_student_config(tmp_path / "student", other))
  assert not (tmp_path / "student" / "checkpoints").exists()


@pytest.mark.parametrize("kw,match", [
    (dict(layers=(0, 4)), r"teacher layers \[4\] out of range; the teacher has layers 0..3"),
    (dict(losses={"ce": 0.5, "hidden_mse": 1.0}, layer_map=(1, 7)), r"layer_map"),
])
def test_layers_out_of_range_fail_before_training(teacher, tmp_path, no_training, kw, match):
  with pytest.raises(ValueError, match=match):
    train.run(_student_config(tmp_path / "student", teacher, **kw))
  assert not (tmp_path / "student" / "checkpoints").exists()


def _fake_dataset(monkeypatch, n: int = 40):
  """A 4-class dataset "fake" of n rows behind the data loaders; returns (split, records)."""
  from research import data as data_lib
  from research.checkpoints import hf
  from research.data import pipeline

  split = synthetic.synthetic_split(n, num_classes=4, vocab_size=128, max_length=8, seed=0)
  records = [{"id": i, "text": "", "label": int(l)} for i, l in zip(split.ids, split.labels)]
  meta = ml_collections.ConfigDict(dict(num_classes=4, label_names=("a", "b", "c", "d"),
                                        multilabel=False))
  monkeypatch.setattr(data_lib, "info", lambda *a, **kw: meta)
  monkeypatch.setattr(data_lib, "load", lambda *a, **kw: records)
  monkeypatch.setattr(pipeline, "load_tokenized", lambda *a, **kw: split)
  monkeypatch.setattr(hf, "resolve_source", lambda source: "unused")
  return split, records


def test_keep_unlabeled_marks_the_rest_minus_one(monkeypatch):
  """The classification task with label_fraction < 1: dropped labels become -1 (keep) or rows go (drop)."""
  from research.data import pipeline

  n = 40
  split, records = _fake_dataset(monkeypatch, n)
  labeled, _ = pipeline.label_fraction(records, 0.25, 0)

  c = smoke.get_config()
  c.data.name, c.data.config = "fake", ""
  c.data.label_fraction = 0.25
  c.data.keep_unlabeled = True
  task = classification.build(c, None)
  kept = task.splits["train"]
  assert len(kept) == n and classification.num_outputs(c) == 4
  assert task.labeled_count("train") == len(labeled) < n
  np.testing.assert_array_equal(np.flatnonzero(kept.labels >= 0), labeled)
  np.testing.assert_array_equal(kept.labels[labeled], split.labels[labeled])
  assert set(np.unique(kept.labels[kept.labels < 0])) == {-1}
  assert (split.labels >= 0).all()  # the loaded split itself is untouched

  c.data.keep_unlabeled = False
  dropped = classification.build(c, None).splits["train"]
  assert len(dropped) == len(labeled)
  np.testing.assert_array_equal(dropped.labels, split.labels[labeled])


def test_steps_from_full_data_keeps_the_step_budget(monkeypatch, tmp_path):
  """A 25% label run trains the full set's steps when asked, its own subset's otherwise."""
  _fake_dataset(monkeypatch, 40)
  steps = {}
  for full in (False, True):
    c = smoke.get_config()
    c.workdir = str(tmp_path / f"full{full}")
    c.data.name, c.data.config = "fake", ""
    c.data.label_fraction = 0.25
    c.data.batch_size = 4
    c.train.epochs, c.train.max_steps = 1.0, 0
    c.train.steps_from_full_data = full
    steps[full] = train.run(c)["steps"]
  assert steps == {False: 3, True: 10}  # ceil(10 labeled / 4) vs ceil(40 / 4)


def _logits_file(path, n, num_classes, *, target, label_names=None):
  """Teacher logits for the smoke task's train ids: every row puts its mass on `target`."""
  ids = [f"synthetic-0-{i}" for i in range(n)]
  logits = np.full((n, num_classes), -8.0, np.float32)
  logits[:, target] = 0.0
  names = label_names or [f"class_{i}" for i in range(num_classes)]
  np.savez(path, ids=np.asarray(ids[::-1]), logits=logits,  # any row order: matched by id
           meta=json.dumps({"label_names": names, "teacher_dir": "elsewhere"}))
  return path


def _logits_student(workdir, logits_path):
  c = smoke.get_config()
  c.workdir = str(workdir)
  c.model.overrides.num_layers = 2
  c.distill.teacher_logits = str(logits_path)
  c.distill.student_init = "fresh"
  c.distill.losses = ml_collections.ConfigDict({"ce": 0.0, "kd_kl": 1.0})
  c.optim.lr = 3e-3
  c.train.max_steps = 12
  c.train.eval_every = 12
  c.train.checkpoint_every = 12
  return c


def test_a_student_of_precomputed_teacher_logits_learns_them_without_a_teacher_model(tmp_path):
  """distill.teacher_logits (e.g. an SFT'd decoder's label scores): no teacher model loaded, the
  logits ride in the batches by example id, and the student moves to what they say."""
  n, c = synthetic.SIZES["train"], classification.SYNTHETIC_CLASSES
  path = _logits_file(tmp_path / "t.npz", n, c, target=1)
  record = train.run(_logits_student(tmp_path / "s", path))
  assert record["kind"] == "distill" and record["teachers"] == []
  assert record["init"] == "random"          # config.model's (the smoke model has no weights)
  assert record["teacher_cache"]["teacher_dir"] == "elsewhere" and record["teacher_flops"] == 0
  assert record["labeled_examples"] == 0     # ce weight 0: no gold label entered the loss
  pred = np.asarray(record["metrics"]["test"]["predictions"])
  assert np.mean(pred == 1) > 0.9            # the teacher's (constant) answer, not the labels


def test_teacher_logits_that_miss_train_ids_or_name_other_labels_are_refused(tmp_path):
  c = classification.SYNTHETIC_CLASSES
  short = _logits_file(tmp_path / "short.npz", 10, c, target=0)
  with pytest.raises(ValueError, match="no logits for .* train examples"):
    train.run(_logits_student(tmp_path / "a", short))
  other = _logits_file(tmp_path / "other.npz", synthetic.SIZES["train"], c, target=0,
                       label_names=[f"x{i}" for i in range(c)])
  with pytest.raises(ValueError, match="labels .* != the task's"):
    train.run(_logits_student(tmp_path / "b", other))
  teacher = tmp_path / "teacher"
  teacher.mkdir()
  (teacher / "result.json").write_text(json.dumps({"fingerprint": "retrained"}))
  stale = tmp_path / "stale.npz"
  with np.load(short) as f:
    np.savez(stale, ids=f["ids"], logits=f["logits"], meta=json.dumps(
        {"teacher_dir": str(teacher), "teacher_fingerprint": "first"}))
  with pytest.raises(ValueError, match="rebuild the file"):
    train.run(_logits_student(tmp_path / "d", stale))
  bad = _logits_student(tmp_path / "c", other)
  bad.distill.student_init = "layers"
  with pytest.raises(ValueError, match="student_init=fresh"):
    train.run(bad)

"""Tests for research.report on synthetic result records (aggregation math, files, columns)."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from research import report

TEACHER_ACC = (0.95, 0.96, 0.94)
STUDENT_ACC = (0.93, 0.95, 0.94)
SEEDS = (0, 1, 2)
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)


def _record(method, seed, acc, *, kind="finetune", params=22_000_000, p50=10.0, teacher=False,
            series=None, fraction=None, gpu=False, domain="bfsi", task="fpb"):
  lat = [{"device": "cpu", "backend": "cpu", "host_cpu": "Test CPU, 2 cores",
          "batch1_p50_ms": p50 + seed * 0.1,
          "batch1_p90_ms": p50 + 1, "throughput_eps": 1000.0 / p50, "throughput_batch_size": 64}]
  if gpu:
    lat.append({"device": "NVIDIA H200", "backend": "gpu", "batch1_p50_ms": p50 / 10,
                "batch1_p90_ms": p50 / 9, "throughput_eps": 50_000.0 / p50})
  rec = {"kind": kind, "method": method, "domain": domain, "task": task, "seed": seed,
         "config": {}, "git_sha": "0" * 7,
         "metrics": {"test": {"accuracy": acc, "macro_f1": acc - 0.02}, "validation": {}},
         "params_total": params, "params_trainable": params // (1 if kind == "distill" else 2),
         "checkpoint_bytes": params * 4, "train_flops": 1.2e15 if teacher else 4e14,
         "train_flops_source": "xla_cost_analysis", "train_seconds": 180.0,
         "examples_seen": 8000, "labeled_examples": 2000,
         "unlabeled_examples": 3000 if kind == "distill" else 0,
         "teacher_flops": 4e14 if kind == "distill" else 0, "latency": lat, "is_teacher": teacher}
  if series:
    rec["series"] = series
  if fraction is not None:
    rec["label_fraction"] = fraction
  return rec


def synthetic_records(gpu: bool = False) -> list[dict]:
  """A small grid like research.grid's: main runs (3 seeds) and a separate data-efficiency sweep."""
  recs = []
  for i, seed in enumerate(SEEDS):
    recs.append(_record("finetune_full", seed, TEACHER_ACC[i], teacher=True, gpu=gpu))
    recs.append(_record("lora", seed, 0.92 + 0.01 * i, gpu=gpu))
    recs.append(_record("kd_soft", seed, STUDENT_ACC[i], kind="distill", params=11_000_000,
                        p50=4.0, gpu=gpu))
    recs.append(_record("control_teacher_init", seed, 0.90, params=11_000_000, p50=4.0, gpu=gpu))
    for f in FRACTIONS:
      recs.append(_record("finetune_full", seed, 0.7 + 0.25 * f, series="teacher", fraction=f))
      recs.append(_record("control_teacher_init", seed, 0.6 + 0.3 * f + 0.01 * seed,
                          params=11_000_000, series="control", fraction=f))
      # The student beats the control by 10 pts at 5%, 12 ± 2 at 10%, trails it by 1 from 25%.
      gap = {0.05: 0.10, 0.1: 0.10 + 0.02 * seed}.get(f, -0.01)
      recs.append(_record("kd_soft", seed, 0.6 + 0.3 * f + 0.01 * seed + gap, kind="distill",
                          params=11_000_000, series="student", fraction=f))
  return recs


def write_synthetic_results(root: Path, gpu: bool = False, layout: str = "cells") -> Path:
  """Writes synthetic records as <root>/cells/<cell>.json (the grid's layout) or
  <root>/<cell>/result.json (layout="result_json"); returns root."""
  for r in synthetic_records(gpu):
    name = f"{r['task']}__{r.get('series') or r['method']}__f{r.get('label_fraction', 1.0)}__s{r['seed']}"
    path = root / "cells" / f"{name}.json" if layout == "cells" else root / name / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r))
  return root


def _row(rows, method):
  (row,) = [r for r in rows if r["method"] == method]
  return row


def test_aggregation_math():
  rows = report.aggregate(synthetic_records())
  assert [r["method"] for r in rows] == ["finetune_full", "control_teacher_init", "kd_soft", "lora"]
  teacher, student = _row(rows, "finetune_full"), _row(rows, "kd_soft")
  assert teacher["is_teacher"] and not student["is_teacher"]
  assert teacher["n_seeds"] == 3
  assert teacher["accuracy_mean"] == pytest.approx(np.mean(TEACHER_ACC))
  assert teacher["accuracy_std"] == pytest.approx(np.std(TEACHER_ACC, ddof=1))
  assert student["macro_f1_mean"] == pytest.approx(np.mean(STUDENT_ACC) - 0.02)
  assert student["retention_vs_teacher"] == pytest.approx(np.mean(STUDENT_ACC) /
                                                          np.mean(TEACHER_ACC))
  assert teacher["retention_vs_teacher"] == pytest.approx(1.0)
  assert student["cpu_latency_ms_p50"] == pytest.approx(4.1)
  assert student["speedup_vs_teacher"] == pytest.approx(10.1 / 4.1)
  assert student["checkpoint_mb"] == pytest.approx(44.0)
  assert student["unlabeled_examples"] == 3000 and student["kind"] == "distill"


def test_single_seed_std_is_zero_and_n_shown():
  recs = [_record("finetune_full", 0, 0.9, teacher=True), _record("kd_soft", 0, 0.8,
                                                                  kind="distill", p50=5.0)]
  rows = report.aggregate(recs)
  assert all(r["n_seeds"] == 1 and r["accuracy_std"] == 0.0 for r in rows)
  assert report.fmt_pm(0.9, 0.0, 1) == "0.900 (n=1)"
  assert "(n=1)" in report.table_markdown(rows)
  assert _row(rows, "kd_soft")["speedup_vs_teacher"] == pytest.approx(2.0)


def test_no_teacher_leaves_relative_columns_empty():
  rows = report.aggregate([_record("finetune_full", 0, 0.9)])
  assert math.isnan(rows[0]["retention_vs_teacher"]) and math.isnan(rows[0]["speedup_vs_teacher"])


def test_kd_vs_control_paired_differences():
  diffs = {d["label_fraction"]: d for d in report.kd_vs_control(synthetic_records())}
  assert sorted(diffs) == [0.05, 0.1, 0.25, 0.5, 1.0]
  assert diffs[0.05]["diff_mean"] == pytest.approx(0.10)
  assert diffs[0.05]["diff_std"] == pytest.approx(0.0, abs=1e-9)
  assert diffs[0.1]["diff_mean"] == pytest.approx(0.12)
  assert diffs[0.1]["diff_std"] == pytest.approx(0.02)
  assert diffs[1.0]["diff_mean"] == pytest.approx(-0.01)
  assert all(d["paired"] and d["n"] == 3 for d in diffs.values())
  assert all((d["student_method"], d["control_method"]) == ("kd_soft", "control_teacher_init")
             for d in diffs.values())


def test_kd_vs_control_unpaired():
  recs = [_record("kd", s, a, series="student", fraction=0.1) for s, a in ((0, 0.8), (1, 0.9))]
  recs += [_record("ctl", s, a, series="control", fraction=0.1) for s, a in ((2, 0.7), (3, 0.7))]
  (d,) = report.kd_vs_control(recs)
  assert not d["paired"] and d["n"] == 2
  assert d["diff_mean"] == pytest.approx(0.15)
  assert d["diff_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))


def test_summary_states_regime_from_data():
  text = report.summary(synthetic_records())
  assert "beats the control at 5% labels: +10.0 ± 0.0 pts (n=3)" in text
  assert "10% labels: +12.0 ± 2.0 pts (n=3)" in text
  assert "does not at 25% labels: -1.0 ± 0.0 pts" in text
  retention = 100 * np.mean(STUDENT_ACC) / np.mean(TEACHER_ACC)
  assert f"keeps {retention:.1f}% of the teacher's accuracy" in text
  assert "No data-efficiency runs" in report.summary([_record("finetune_full", 0, 0.9)])


@pytest.mark.parametrize("layout", ["cells", "result_json"])
def test_write_report_files_and_columns(tmp_path, layout):
  results = write_synthetic_results(tmp_path / "results", layout=layout)
  paths = report.write_report(results)
  expected = {"table.csv", "table.md", "table.tex", "qualitative.md", "summary.md", "pareto.png",
              "data_efficiency.png"}
  assert set(paths) == expected
  for p in paths.values():
    assert p.parent == results and p.stat().st_size > 0
  with open(paths["table.csv"]) as f:
    reader = csv.DictReader(f)
    rows = list(reader)
  assert set(report.REQUIRED_COLUMNS) <= set(reader.fieldnames)
  assert not any(c.startswith("gpu_") for c in reader.fieldnames)
  teacher = [r for r in rows if r["is_teacher"] == "true"]
  assert [r["method"] for r in teacher] == ["finetune_full"]
  assert len(rows) == 4  # data-efficiency runs are not table rows
  assert float(teacher[0]["accuracy_mean"]) == pytest.approx(np.mean(TEACHER_ACC))
  assert paths["table.tex"].read_text().count(r"\toprule") == 1
  qual = paths["qualitative.md"].read_text()
  for name in ("Main goal", "Best suited for", "Data required", "Output quality", "Cost",
               "Where it runs best"):
    assert f"**{name}**" in qual
  assert "faster than the teacher at batch 1 on CPU" in qual
  assert "on CPU (Test CPU, 2 cores)" in qual


def test_gpu_columns_only_with_gpu_records(tmp_path):
  paths = report.write_report(synthetic_records(gpu=True), tmp_path / "out")
  with open(paths["table.csv"]) as f:
    fields = csv.DictReader(f).fieldnames
  assert {"gpu_latency_ms_p50", "gpu_throughput_eps", "gpu_device"} <= set(fields)
  assert "GPU p50 ms" in paths["table.md"].read_text()


def test_bad_records_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="no cells"):
    report.load_records(tmp_path)
  rec = _record("finetune_full", 0, 0.9)
  del rec["task"]
  with pytest.raises(ValueError, match="no 'task'"):
    report.load_records([rec])
  with pytest.raises(ValueError, match="duplicate"):
    report.load_records([_record("m", 0, 0.9), _record("m", 0, 0.8)])
  with pytest.raises(ValueError, match="different params_total"):
    report.aggregate([_record("m", 0, 0.9), _record("m", 1, 0.9, params=5)])


def test_fields_from_config_tags():
  rec = _record("lora", 0, 0.9, series="control", fraction=0.5)
  for key in ("domain", "task", "method", "series", "is_teacher", "seed", "label_fraction"):
    del rec[key]
  rec["config"] = {"seed": 4, "data": {"label_fraction": 0.5},
                   "tags": {"domain": "legal", "task": "ledgar", "method": "lora",
                            "series": "control", "is_teacher": False}}
  (r,) = report.load_records([rec])
  assert (r["domain"], r["task"], r["method"], r["series"], r["seed"]) == (
      "legal", "ledgar", "lora", "control", 4)
  assert report.data_efficiency([r])[0]["label_fraction"] == 0.5


def test_pareto_front():
  pts = [(1.0, 0.8), (2.0, 0.9), (3.0, 0.85), (0.5, 0.7), (4.0, 0.95)]
  assert report.pareto_front(pts) == [3, 0, 1, 4]


def test_cli(tmp_path):
  results = write_synthetic_results(tmp_path / "results")
  out = subprocess.run([sys.executable, "-m", "research.report", str(results), "--out",
                        str(tmp_path / "rep")], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[1])
  assert "table.csv" in out.stdout and (tmp_path / "rep" / "table.md").exists()


def test_train_flops_of_a_row_come_from_one_source():
  xla = [_record("lora", s, 0.9) for s in (0, 1)]
  assert report.aggregate(xla)[0]["train_flops_source"] == "xla_cost_analysis"
  # One seed counted analytically only (an older record): the row uses every seed's analytic count.
  old = dict(_record("lora", 2, 0.9), train_flops=3e14, train_flops_source="analytic")
  for r, analytic in zip(xla, (1e14, 2e14)):
    r["train_flops_analytic"] = analytic
  row = report.aggregate(xla + [old])[0]
  assert row["train_flops_source"] == "analytic"
  assert row["train_flops"] == pytest.approx(2e14)


def test_report_flop_sources_are_cost_module_sources():
  from research import cost
  assert (report.XLA_SOURCE, report.ANALYTIC_SOURCE) == (cost.SOURCE_XLA, cost.SOURCE_ANALYTIC)


def test_data_efficiency_takes_full_label_points_from_main_runs():
  """The grid does not rerun the 100% point: the main teacher/control/student runs stand for it."""
  recs = [r for r in synthetic_records() if not (r.get("series") and r["label_fraction"] == 1.0)]
  points = {(d["series"], d["label_fraction"]): d for d in report.data_efficiency(recs)}
  assert points[("teacher", 1.0)]["metric_mean"] == pytest.approx(np.mean(TEACHER_ACC))
  assert points[("student", 1.0)]["metric_mean"] == pytest.approx(np.mean(STUDENT_ACC))
  assert points[("control", 1.0)]["n"] == 3
  assert not any(d["series"] not in ("teacher", "control", "student") for d in points.values())
  # A series' own 100% runs win over the main runs; tasks without a series get no points.
  own = {(d["series"], d["label_fraction"]): d for d in report.data_efficiency(synthetic_records())}
  assert own[("teacher", 1.0)]["metric_mean"] == pytest.approx(0.95)
  other = [_record("finetune_full", 0, 0.9, teacher=True, task="other")]
  assert report.data_efficiency(other) == []


def test_summary_names_fastest_student_above_retention_bar():
  recs = [_record("finetune_full", 0, 0.950, teacher=True, p50=20.0),
          _record("kd_soft", 0, 0.940, kind="distill", p50=10.0),
          _record("kd_soft_2layer", 0, 0.925, kind="distill", p50=5.0),  # 97.4%: 4x
          _record("kd_tiny", 0, 0.900, kind="distill", p50=2.0)]          # 94.7%: under the bar
  text = report.summary(recs)
  assert "best distilled student (kd_soft)" in text
  assert "fastest student within 97.0% of the teacher (kd_soft_2layer) keeps 97.4%" in text
  assert "4.00× faster" in text


def test_summary_one_seed_difference_has_no_spread():
  recs = [_record("kd_soft", 0, 0.85, kind="distill", series="student", fraction=0.05),
          _record("control_teacher_init", 0, 0.81, series="control", fraction=0.05)]
  text = report.summary(recs)
  assert "5% labels: +4.0 pts (n=1, one seed; no spread)" in text
  assert "±" not in text.split("KD beats")[1]


def _onnx_doc() -> dict:
  """What experiments/export_onnx.py writes: per-row onnx_* seed means, host, settings, versions."""
  row = lambda f32, int8, acc: {"onnx_f32_p50_ms": f32, "onnx_int8_p50_ms": int8,
                                "onnx_int8_eps": 1000.0 / int8, "onnx_int8_mb": 23.0,
                                "onnx_int8_acc": acc, "onnx_f32_acc": 0.95, "onnx_n_seeds": 3}
  return {"host_cpu": "Test CPU, 2 cores", "runs": {},
          "settings": {"seq_len": 64, "throughput_batch": 32, "rounds": 5},
          "versions": {"jax2onnx": "0.17.1", "onnx": "1.23.2", "onnxruntime": "1.32.0"},
          "rows": {"fpb/finetune_full": row(10.9, 5.38, 0.9557),
                   "fpb/kd_soft": row(5.2, 2.35, 0.93),
                   "other/finetune_full": row(1.0, 1.0, 0.5)}}  # a row no record has: ignored


def test_onnx_json_adds_ort_columns_and_note(tmp_path):
  results = write_synthetic_results(tmp_path / "results")
  extra = _record("finetune_full", 0, 0.8, teacher=True, task="ledgar")  # no ONNX rows: as before
  (results / "cells" / "ledgar__finetune_full__s0.json").write_text(json.dumps(extra))
  plain = report.write_report(results, tmp_path / "plain")["table.md"].read_text()
  (results / report.ONNX_FILE).write_text(json.dumps(_onnx_doc()))
  paths = report.write_report(results, tmp_path / "onnx")
  md = paths["table.md"].read_text()
  fpb, ledgar = md.split("## bfsi / fpb")[1], md.split("## bfsi / ledgar")[1].split("## Legend")[0]
  assert "| ORT f32 p50 ms | ORT int8 p50 ms | int8 ex/s | int8 MB | int8 acc |" in fpb
  teacher = next(line for line in fpb.splitlines() if line.startswith("| **finetune_full**"))
  assert "| 10.9 | 5.38 | 186 | 23 | 0.956 |" in teacher
  lora = next(line for line in fpb.splitlines() if line.startswith("| lora"))
  assert "| – | – | – | – | – |" in lora
  assert ("ORT columns: the same best params exported to ONNX (jax2onnx 0.17.1, onnxruntime "
          "1.32.0) and run in ONNX Runtime on CPU (Test CPU, 2 cores)") in fpb
  assert "width 64, ex/s at batch 32, median of 5 rounds" in fpb and "3 seed(s)" in fpb
  assert "ORT" not in ledgar and ledgar == plain.split("## bfsi / ledgar")[1].split("## Legend")[0]
  assert "ORT" not in plain
  with open(paths["table.csv"]) as f:
    rows = {r["method"]: r for r in csv.DictReader(f) if r["task"] == "fpb"}
  assert float(rows["kd_soft"]["onnx_int8_acc"]) == pytest.approx(0.93)
  assert rows["lora"]["onnx_int8_acc"] == "" and rows["kd_soft"]["onnx_n_seeds"] == "3"
  # compare.py passes records and out_dir=results_dir: the onnx.json there is merged too.
  listed = report.write_report(report.load_records(results), results)["table.md"].read_text()
  assert "ORT int8 p50 ms" in listed


def test_rows_without_onnx_json_are_unchanged(tmp_path):
  results = write_synthetic_results(tmp_path / "results")
  rows = report.aggregate(report.load_records(results))
  assert report.load_onnx(results) is None
  assert not any(k.startswith("onnx_") for r in rows for k in r)
  same = report.aggregate(report.load_records(results), {"rows": {}})
  assert json.dumps(same) == json.dumps(rows)

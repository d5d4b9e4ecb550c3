"""The LLM comparison table of finished decoder runs: quality, paired tests, size and decode speed.

  python -m experiments.llm_table --out=results/llm_bfsi \
      --teacher=runs/sft/phrasebank_allagree/lora_r8_lr2e-4 \
      --control=runs/llm_bfsi/phrasebank_allagree/control_teacher_init_seed0,... \
      --runs=runs/llm_bfsi/phrasebank_allagree/tok_kl_seed0,...

For every run dir (its result.json and best params): test accuracy / macro-F1 by label scoring
(recomputed from the best params, and checked against the record), the paired test of each row
against the same-init control (same teacher, same seed) on the same test examples (McNemar exact, paired bootstrap of the
accuracy and macro-F1 difference), retention of the teacher's primary metric, params, checkpoint
MB, and batch-1 prefill / greedy decode tokens/s of every model shape timed in one process,
interleaved over --rounds rounds (median; random weights of each shape, speed does not depend on
them). With --generation_tokens=N, each run also answers every test prompt greedily (N tokens) and
the parsed answers give generation accuracy / macro-F1 and the unparseable rate
(research/zero_shot.py's evaluate_cell, the zero-shot table's rule). Writes table.md, table.csv and
records.json under --out.
"""

import csv
import json
import os
import pathlib
import statistics

from absl import flags
import jax
import ml_collections
import numpy as np

from experiments import bench_decoder
from experiments import cli
from research import paired
from research import tasks as tasks_lib
from research.checkpoints import store
from research.models import decoder
from research.models import registry

_OUT = flags.DEFINE_string("out", None, "Results folder.")
_TEACHER = flags.DEFINE_string("teacher", None, "The SFT teacher's run dir.")
_CONTROL = flags.DEFINE_list("control", [], "Same-init control run dirs; each row is paired with "
                             "the control of its own teacher and seed.")
_RUNS = flags.DEFINE_list("runs", [], "Other run dirs (students).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds.")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Decode tokens timed per round.")
_PROMPT = flags.DEFINE_integer("prompt_len", 128, "Prefill tokens timed per round.")
_GENERATION = flags.DEFINE_integer("generation_tokens", 0, "> 0: also each run's generation "
                                   "accuracy on test (greedy answers of up to this many tokens, "
                                   "parsed to a label; unparseable counts wrong).")


def test_predictions(run_dir: str) -> tuple[dict, np.ndarray, np.ndarray]:
  """(record, predicted label per test example, gold labels) from the run's best params."""
  record = json.loads((pathlib.Path(run_dir) / "result.json").read_text())
  config = ml_collections.ConfigDict(record["config"])
  params, cfg = store.load_run_params(run_dir)
  task = tasks_lib.get(config.task).build(config, cfg)
  apply = registry.get_family(config.model.family).bind(decoder.Decoder(cfg))
  predict = jax.jit(task.predict_fn(apply))
  outs = []
  for batch in task.eval_batches("test", config.data.eval_batch_size):
    out = jax.tree.map(np.asarray, predict(params, batch, None))
    keep = out["valid"] > 0
    outs.append({k: v[keep] for k, v in out.items()})
  preds = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
  scores, labels = task.option_scores(preds, "test")
  pred = scores.argmax(1)
  want = record["metrics"]["test"]["accuracy"]
  if abs(paired.accuracy(pred, labels) - want) > 1e-6:
    raise ValueError(f"{run_dir}: recomputed test accuracy {paired.accuracy(pred, labels)} != "
                     f"the record's {want}; the run dir changed after its record was written.")
  return record, pred, labels


def generation_metrics(run_dir: str, record: dict, max_new_tokens: int) -> dict:
  """Generation accuracy on test of a run's best params (greedy, parsed; unparseable = wrong)."""
  from research import zero_shot  # pylint: disable=g-import-not-at-top
  tok, lm, _ = zero_shot.load_teacher(run_dir, record["config"]["model"]["dtype"])
  task = zero_shot.load_task(record["config"]["tags"]["task"] or "phrasebank_allagree")
  data = ml_collections.ConfigDict(record["config"]["data"])
  test, train = (zero_shot.load_examples(task, s, data) for s in ("test", "train"))
  out = zero_shot.evaluate_cell(lm, tok, task, test, train, k=0, seed=0,
                                context_words=data.context_words, max_new_tokens=max_new_tokens,
                                progress=False)["metrics"]
  return {"gen_accuracy": out["generation"]["accuracy"], "gen_macro_f1": out["generation"]["macro_f1"],
          "gen_unparseable_rate": out["generation"]["unparseable_rate"],
          "gen_scoring_accuracy": out["scoring"]["accuracy"]}


def time_shapes(shapes: dict[str, decoder.DecoderConfig]) -> dict[str, dict]:
  """Batch-1 prefill and decode tokens/s per shape, interleaved over rounds (medians)."""
  params = {k: decoder.init_params(c, jax.random.PRNGKey(0)) for k, c in shapes.items()}
  runs: dict[str, list[dict]] = {k: [] for k in shapes}
  for _ in range(_ROUNDS.value):
    for k, c in shapes.items():
      runs[k].append(bench_decoder.bench(params[k], c, 1, _PROMPT.value, _NEW.value, 2))
  out = {}
  for k, rs in runs.items():
    dec = [r["decode_tok_s"] for r in rs]
    out[k] = {"prefill_tok_s": statistics.median(r["prefill_tok_s"] for r in rs),
              "decode_tok_s": statistics.median(dec), "decode_tok_s_min": min(dec),
              "decode_tok_s_max": max(dec), "rounds": len(rs)}
  return out


def row(record, pred, labels, teacher, control, speed) -> dict:
  m = record["metrics"]
  primary = record["primary_metric"]
  r = {"method": record["method"], "layers": record["model"]["num_layers"],
       "seed": record["seed"], "params": record["params_total"],
       "checkpoint_mb": round(record["checkpoint_bytes"] / 2**20, 1),
       "val_accuracy": m["validation"]["accuracy"], "val_macro_f1": m["validation"]["macro_f1"],
       "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
       "primary_metric": primary, "primary_metric_value": m["test"][primary],
       "retention_vs_teacher": m["test"][primary] / teacher["metrics"]["test"][primary],
       "labeled_examples": record["labeled_examples"],
       "validation_labels": m["validation"]["num_examples"],
       "teacher_generated_examples": (record.get("generations") or {}).get("n_generated", 0),
       "teacher_cache_flops": (record.get("teacher_cache") or {}).get("build_flops"),
       "train_flops": record["train_flops"], "train_minutes": record["train_seconds"] / 60,
       **{k: v for k, v in speed.items() if k != "rounds"}}
  r["speedup_vs_teacher"] = None
  if control is not None and record["run_dir"] != control[0]["run_dir"]:
    _, c_pred, c_labels = control
    if not np.array_equal(labels, c_labels):
      raise ValueError(f"{record['run_dir']} and the control were tested on different examples.")
    mc = paired.mcnemar_exact(pred == labels, c_pred == labels)
    acc = paired.paired_bootstrap(paired.accuracy, pred, c_pred, labels)
    f1 = paired.paired_bootstrap(paired.macro_f1, pred, c_pred, labels)
    r.update({"vs_control": paired.verdict(acc["ci_low"], acc["ci_high"]),
              "paired_p_value": mc["p_value"], "paired_diff_acc": acc["diff"],
              "paired_diff_ci_low": acc["ci_low"], "paired_diff_ci_high": acc["ci_high"],
              "paired_diff_f1": f1["diff"], "paired_diff_f1_ci_low": f1["ci_low"],
              "paired_diff_f1_ci_high": f1["ci_high"]})
  return r


def _own_teacher(record: dict, loaded: dict, default: dict) -> dict:
  """The record of the run's teacher when it is in the table, else --teacher's."""
  for d, (rec, _, _) in loaded.items():
    if record.get("teachers") and os.path.abspath(record["teachers"][0]) == os.path.abspath(d):
      return rec
  return default


def _control_of(record: dict, loaded: dict):
  """The control with this row's teacher and seed (None for teachers and unmatched rows)."""
  if not record.get("teachers"):
    return None
  for d in _CONTROL.value:
    c = loaded[d][0]
    if c["teachers"] == record["teachers"] and c["seed"] == record["seed"]:
      return loaded[d]
  return None


def main(argv):
  del argv
  if not (_OUT.value and _TEACHER.value and _CONTROL.value):
    raise ValueError("give --out, --teacher and --control (run dirs; see the docstring).")
  dirs = [_TEACHER.value] + list(_CONTROL.value) + [d for d in _RUNS.value if d]
  loaded = {d: test_predictions(d) for d in dirs}
  shape_key = registry.get_family("llama").shape_key
  shapes = {shape_key(rec["model"]): decoder.DecoderConfig(**rec["model"])
            for rec, _, _ in loaded.values()}
  speed = time_shapes(shapes)
  teacher = loaded[_TEACHER.value][0]
  rows = []
  for d in dirs:
    rec, pred, labels = loaded[d]
    key = shape_key(rec["model"])
    own = _own_teacher(rec, loaded, teacher)  # a student's retention reads its own teacher
    r = row(rec, pred, labels, own, _control_of(rec, loaded), speed[key])
    r["teacher"] = own["run_dir"]
    r["speedup_vs_teacher"] = (speed[key]["decode_tok_s"]
                               / speed[shape_key(own["model"])]["decode_tok_s"])
    r["run_dir"] = d
    if _GENERATION.value > 0:
      r.update(generation_metrics(d, rec, _GENERATION.value))
    rows.append(r)
  write(rows, speed, pathlib.Path(_OUT.value))


def write(rows, speed, out: pathlib.Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  keys = list(dict.fromkeys(k for r in rows for k in r))
  with open(out / "table.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
  gen = ["gen_accuracy", "gen_unparseable_rate"] if any("gen_accuracy" in r for r in rows) else []
  cols = ["method", "layers", "seed", "test_accuracy", "test_macro_f1", *gen, "retention_vs_teacher",
          "vs_control", "paired_diff_acc", "paired_diff_ci_low", "paired_diff_ci_high",
          "paired_p_value", "decode_tok_s", "speedup_vs_teacher", "prefill_tok_s", "params",
          "checkpoint_mb", "labeled_examples", "validation_labels", "teacher_generated_examples",
          "train_minutes"]
  fmt = lambda v: "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
  (out / "table.md").write_text("\n".join(lines) + "\n")
  (out / "records.json").write_text(json.dumps({"rows": rows, "speed": speed,
                                                "host_cpu": bench_decoder.host_cpu()}, indent=1))
  print("\n".join(lines))


if __name__ == "__main__":
  cli.run(main)

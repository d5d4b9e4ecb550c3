"""Times every model shape of a results folder in one pass per backend; fills its latency.json.

  python -m experiments.bench_latency --results_dir results/bfsi          # if not timed in one pass
  python -m experiments.bench_latency --results_dir results/bfsi --retime # time the table again
  python -m experiments.bench_latency --results_dir results/bfsi --backends gpu

All shapes of the table are compiled, then timed in `--rounds` interleaved rounds (research/
latency.py): a shared machine's load hits every shape alike, and the note under the table gives
the rounds and the spread. The cell records get the new latency and the table is rewritten.

Train on one machine, time on another: run this where the accelerator is, bring latency.json back,
and `python -m experiments.compare --config configs/<domain>.py --report_only` shows a column per
backend, naming the device. Weights do not affect latency, so no checkpoint is needed, only the
records in <results_dir>/cells. Settings default to the grid's (configs/grid_common.py).
"""

import pathlib

from absl import app
from absl import flags

from experiments import cli
from research import compare
from research import latency
from research import report

_RESULTS_DIR = flags.DEFINE_string("results_dir", None, "Folder with cells/*.json records.",
                                   required=True)
_BACKENDS = flags.DEFINE_list("backends", [], "Backends to time (default: every one here).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Sequence length of the timed inputs.")
_ITERS = flags.DEFINE_integer("iters", 50, "Timed batch-1 calls (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed calls after compilation.")
_THROUGHPUT_BATCH = flags.DEFINE_integer("throughput_batch", 64, "Batch size for throughput.")
_THROUGHPUT_ITERS = flags.DEFINE_integer("throughput_iters", 10, "Timed calls at that batch.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds sharing iters/throughput_iters.")
_RETIME = flags.DEFINE_bool("retime", False, "Time every shape again even if timed in one pass.")
_WRITE_REPORT = flags.DEFINE_bool("write_report", True, "Put the timings in the cell records and "
                                  "rewrite the table (research.report).")


def main(argv):
  del argv
  results = pathlib.Path(_RESULTS_DIR.value)
  try:
    records = report.load_records(results)
  except FileNotFoundError as e:
    raise app.UsageError(f"no records in {results}: {e}") from e
  here = latency.available_backends()
  backends = _BACKENDS.value or here
  missing = sorted(set(backends) - set(here))
  if missing:
    raise app.UsageError(f"--backends {','.join(missing)} not available here (jax sees {here}).")
  shapes = latency.record_shapes(records)
  cache = latency.table_pass(
      shapes, results, backends=backends, retime=_RETIME.value, seq_len=_SEQ_LEN.value,
      iters=_ITERS.value, warmup=_WARMUP.value, throughput_batch=_THROUGHPUT_BATCH.value,
      throughput_iters=_THROUGHPUT_ITERS.value, rounds=_ROUNDS.value)
  for key in sorted(shapes):
    for b in backends:
      r = cache[f"{key}/{b}"]
      spread = r.get("batch1_spread_ms")
      print(f"{key:28s} {b:4s} {r['device']:24s} p50 {r['batch1_p50_ms']:8.3f} ms  "
            f"p90 {r['batch1_p90_ms']:8.3f} ms  {r['throughput_eps']:10.1f} ex/s "
            f"@ batch {r['throughput_batch_size']}"
            + (f"  spread {spread:.3f} ms over {r['rounds']} rounds" if spread is not None else ""))
  print(f"wrote {results / latency.CACHE_NAME}")
  if _WRITE_REPORT.value:
    compare.apply_latency(records, cache, results)
    for name, path in report.write_report(results).items():
      print(f"{name}: {path}")


if __name__ == "__main__":
  cli.run(main)

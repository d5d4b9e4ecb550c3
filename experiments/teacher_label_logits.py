"""An SFT'd decoder's label distribution over a task's train split, as teacher logits for an encoder.

Cross-family distillation: the decoder (e.g. SmolLM2-135M fine-tuned on PhraseBank) scores every
train prompt; each label's logit is the teacher's log-prob of that label's (single) answer token
at the first answer position, read from the teacher's top-k cache of the causal-LM task
(research/tasks/token_cache.py; built here when missing). The encoder student then trains with
`--config.distill.teacher_logits=<out>` (configs/distill_phrasebank.py:cross_family).

  python -m experiments.teacher_label_logits \
      --config=configs/llm_student_phrasebank.py:tok_kl \
      --config.distill.teacher=runs/sft/phrasebank_allagree/full_lr5e-5 \
      --out=runs/cross_family/phrasebank_allagree/smollm2_sft_full.npz

The .npz holds ids (example ids), logits (N×C) and meta (teacher, fingerprint, labels, how).
"""

import json
import pathlib

from absl import flags
import numpy as np
from ml_collections import config_flags

from experiments import cli
from research import tasks as tasks_lib
from research.checkpoints import store
from research.models import decoder
from research.models import registry
from research.tasks import token_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "A causal_lm student config: its task "
                                          "and distill.teacher (an SFT'd decoder run) are used.")
_OUT = flags.DEFINE_string("out", None, "Output .npz.")


def _gold(task) -> np.ndarray:
  rows = task._rows["train"]  # pylint: disable=protected-access
  return rows.labels[rows.example]  # one row per train example: its gold answer


def label_tokens(task) -> np.ndarray:
  """The answer's first token per label, from the train rows' gold answers (checked unique)."""
  train = task.splits["train"]
  first = train.token_type_ids.argmax(1)
  tok = train.input_ids[np.arange(len(first)), first]
  gold = _gold(task)
  out = np.full(len(task.label_strings), -1, np.int64)
  for c in range(len(out)):
    seen = set(tok[gold == c].tolist())
    if len(seen) != 1:
      raise ValueError(f"label {task.label_strings[c]!r} starts with tokens {sorted(seen)[:5]} "
                       "across the train rows; one first token per label is needed.")
    out[c] = seen.pop()
  if len(set(out.tolist())) != len(out):
    raise ValueError(f"labels {task.label_strings} share a first token; label logits would tie.")
  return out


def label_logits(cache: token_cache.TeacherTopK, tokens: np.ndarray, vocab: int
                 ) -> tuple[np.ndarray, int]:
  """(N×C log-probs of each label token at answer slot 0, how many fell outside the top-k).

  A token outside the top-k gets its share of the tail bin, log(tail / (V - k)).
  """
  ids, logp = cache.ids_NxAxK[:, 0], cache.logprobs_NxAxK1[:, 0]
  k = ids.shape[1]
  tail = logp[:, -1] - np.log(vocab - k)
  hit = ids[:, :, None] == tokens[None, None, :]              # N×k×C
  found = hit.any(1)
  picked = np.where(hit, logp[:, :k, None], 0.0).sum(1)
  return np.where(found, picked, tail[:, None]).astype(np.float32), int((~found).sum())


def main(argv):
  del argv
  config = _CONFIG.value
  teacher = config.distill.teacher
  task = tasks_lib.get(config.task).build(config, None)
  params, cfg = store.load_run_params(teacher)
  family = registry.get_family(config.model.family)
  apply = family.bind(decoder.Decoder(cfg))
  k = int(config.distill.cache_top_k) or 64
  cache = token_cache.load_or_build(
      task, teacher, apply, params, cfg, k=k, temperature=1.0,
      batch_size=config.data.eval_batch_size,
      forward_flops=lambda b, width: family.analytic_flops(cfg, b, width, False))
  tokens = label_tokens(task)
  logits, outside = label_logits(cache, tokens, cfg.vocab_size)
  ids = [i.rsplit("#", 1)[0] for i in task.splits["train"].ids]
  record = json.loads((pathlib.Path(teacher) / "result.json").read_text())
  meta = {"teacher_dir": teacher, "teacher_fingerprint": record.get("fingerprint", ""),
          "teacher_method": record.get("method"), "teacher_params": record.get("params_total"),
          "task": task.name, "label_names": list(task.label_strings),
          "label_tokens": tokens.tolist(), "top_k": k, "outside_top_k": outside,
          "how": "teacher log-prob of each label's answer token at the first answer position",
          "cache": cache.meta.get("path"), "cache_build_flops": cache.meta.get("build_flops"),
          "train_accuracy": float(np.mean(logits.argmax(1) == _gold(task)))}
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp.npz")
  np.savez(tmp, ids=np.asarray(ids), logits=logits, meta=json.dumps(meta, sort_keys=True))
  tmp.replace(out)
  print(f"{len(ids)} rows x {len(tokens)} labels -> {out}; teacher train accuracy "
        f"{meta['train_accuracy']:.3f}; {outside} label tokens outside the top-{k}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "out"])
  cli.run(main)

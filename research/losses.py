"""Loss functions for fine-tuning and knowledge distillation.

Two layers:

* Array-level losses (`cross_entropy`, `kd_kl`, `hidden_mse`, ...): pure, keyword-only, computed in
  float32, returning `(scalar, metrics)`. Every loss takes `valid_B` (1 real row, 0 padding row) and
  averages over real rows only, so padding rows contribute exactly zero.
* Registry terms (`LOSSES`): one adapter per config name that reads the model output dicts
  (docs/ARCHITECTURE.md: "logits", "hidden_states", "attentions") and the batch. `combined_loss`
  sums the terms by config weight, e.g. `c.distill.losses = {"ce": 1 - alpha, "kd_kl": alpha}`.

Adding a loss = one term function (keyword arguments as in `combined_loss`, `**_` for the rest;
returns (scalar, metrics); mark extra model outputs it reads with `@_requires`) + one `LOSSES`
entry. Keep reusable array math in a public function the term calls, as the existing ones do.

Feature losses (hidden_mse, attn_kl, cosine) read teacher_out["hidden_states"/"attentions"]; with
several teachers pass the features of the one to match (logit losses take the list).

Label conventions: single-label `label` is int32 B; multilabel `label` is float32 B×C (0/1). A
label < 0 marks an unlabeled row (`data.keep_unlabeled`): label losses ignore it, distillation
losses still use it.
"""

from collections.abc import Callable, Mapping, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp

from research import token_losses

Array = jax.Array
Metrics = dict[str, Array]
LossOut = tuple[Array, Metrics]

# Stand-in for log(0) on masked-out attention keys; finite so 0 * it stays 0 in gradients.
_LOG_EPS = 1e-12


def _f32(x) -> Array:
  return jnp.asarray(x, jnp.float32)


def _masked_mean(loss_B: Array, valid_B: Array) -> Array:
  """Mean of `loss_B` over rows with `valid_B` > 0; 0 when no row is valid."""
  valid_B = _f32(valid_B)
  return jnp.sum(loss_B * valid_B) / jnp.maximum(jnp.sum(valid_B), 1.0)


def _tokens_mean(loss_BxL: Array, mask_BxL: Array) -> Array:
  """Per-example mean over real tokens: B×L -> B."""
  mask_BxL = _f32(mask_BxL)
  return jnp.sum(loss_BxL * mask_BxL, -1) / jnp.maximum(jnp.sum(mask_BxL, -1), 1.0)


def _log_probs(logits_BxC: Array, temperature: float, multilabel: bool) -> Array:
  """Log-distributions at temperature T over the last axis.

  Single-label: log-softmax over classes, B×C. Multilabel: one Bernoulli per class, B×C×2 holding
  (log σ(z/T), log σ(-z/T)), so a KL summed over the last axis is the per-class Bernoulli KL.
  """
  z = _f32(logits_BxC) / temperature
  if multilabel:
    return jnp.stack([jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)], -1)
  return jax.nn.log_softmax(z, -1)


def _kl_rows(logp_t: Array, logp_s: Array, multilabel: bool) -> Array:
  """KL(p_t ‖ p_s) per row: sum over the distribution axis (mean over classes if multilabel)."""
  kl = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), -1)
  return jnp.mean(kl, -1) if multilabel else kl


# ----------------------------------------------------------------------------- label losses


def cross_entropy(*, logits_BxC: Array, labels_B: Array, valid_B: Array,
                  label_smoothing: float = 0.0) -> LossOut:
  """Softmax cross-entropy with hard labels (optional label smoothing, Szegedy et al. 2016).

  Args:
    logits_BxC: student logits.
    labels_B: int class ids; rows with a label < 0 (unlabeled) are ignored.
    valid_B: float mask, 1 for real rows, 0 for padding rows.
    label_smoothing: mass spread uniformly over the C classes.

  Returns:
    (mean CE over valid labeled rows, {"ce", "accuracy"}).
  """
  logits_BxC = _f32(logits_BxC)
  num_classes = logits_BxC.shape[-1]
  labels_B = jnp.asarray(labels_B, jnp.int32)
  valid_B = _f32(valid_B) * (labels_B >= 0)
  targets_BxC = jax.nn.one_hot(jnp.maximum(labels_B, 0), num_classes)
  targets_BxC = targets_BxC * (1.0 - label_smoothing) + label_smoothing / num_classes
  ce_B = -jnp.sum(targets_BxC * jax.nn.log_softmax(logits_BxC, -1), -1)
  loss = _masked_mean(ce_B, valid_B)
  acc = _masked_mean(_f32(jnp.argmax(logits_BxC, -1) == labels_B), valid_B)
  return loss, {"ce": loss, "accuracy": acc}


def sigmoid_cross_entropy(*, logits_BxC: Array, labels_BxC: Array, valid_B: Array,
                          label_smoothing: float = 0.0) -> LossOut:
  """Multilabel binary cross-entropy: one sigmoid per class, mean over classes.

  Args:
    logits_BxC: student logits.
    labels_BxC: 0/1 targets; a row with any entry < 0 is unlabeled and ignored.
    valid_B: float mask, 1 for real rows.
    label_smoothing: targets become y(1 - ls) + ls/2.

  Returns:
    (mean BCE over valid labeled rows, {"bce", "accuracy"}) — accuracy is per-label (threshold 0).
  """
  logits_BxC = _f32(logits_BxC)
  labels_BxC = _f32(labels_BxC)
  valid_B = _f32(valid_B) * jnp.all(labels_BxC >= 0, -1)
  targets_BxC = jnp.clip(labels_BxC, 0.0, 1.0) * (1.0 - label_smoothing) + label_smoothing / 2
  bce_BxC = -(targets_BxC * jax.nn.log_sigmoid(logits_BxC)
              + (1.0 - targets_BxC) * jax.nn.log_sigmoid(-logits_BxC))
  loss = _masked_mean(jnp.mean(bce_BxC, -1), valid_B)
  acc = _masked_mean(jnp.mean(_f32((logits_BxC > 0) == (labels_BxC > 0.5)), -1), valid_B)
  return loss, {"bce": loss, "accuracy": acc}


def token_nll(*, token_logprobs_BxL: Array, mask_BxL: Array) -> LossOut:
  """Mean negative log-likelihood of the masked tokens (SFT: the answer tokens only).

  Args:
    token_logprobs_BxL: log p(token_t | tokens_<t), f32.
    mask_BxL: 1 on tokens that count (answer tokens of real rows), 0 on prompt and padding.
  """
  mask_BxL = _f32(mask_BxL)
  total = jnp.sum(-_f32(token_logprobs_BxL) * mask_BxL)
  nll = total / jnp.maximum(jnp.sum(mask_BxL), 1.0)
  return nll, {"nll": nll, "tokens": jnp.sum(mask_BxL)}


def labels_only(*, student_logits_BxC: Array, teacher_logits_BxC: Array, valid_B: Array,
                label_smoothing: float = 0.0, multilabel: bool = False) -> LossOut:
  """Hard-label distillation: cross-entropy on the teacher's answers, no soft targets.

  The teacher's argmax (multilabel: its logits > 0) is the label, i.e. pseudo-labelling /
  "sequence-level" KD in its simplest form (Kim & Rush 2016).

  Returns:
    (loss, {"ce", "accuracy", "agreement"}), "agreement" = student matches teacher labels.
  """
  teacher_logits_BxC = jax.lax.stop_gradient(_f32(teacher_logits_BxC))
  if multilabel:
    loss, m = sigmoid_cross_entropy(logits_BxC=student_logits_BxC,
                                    labels_BxC=_f32(teacher_logits_BxC > 0), valid_B=valid_B,
                                    label_smoothing=label_smoothing)
    return loss, {"bce": loss, "agreement": m["accuracy"]}
  loss, m = cross_entropy(logits_BxC=student_logits_BxC,
                          labels_B=jnp.argmax(teacher_logits_BxC, -1), valid_B=valid_B,
                          label_smoothing=label_smoothing)
  return loss, {"ce": loss, "agreement": m["accuracy"]}


# ----------------------------------------------------------------------------- logit distillation


def kd_kl(*, student_logits_BxC: Array, teacher_logits_BxC: Array, valid_B: Array,
          temperature: float = 1.0, multilabel: bool = False) -> LossOut:
  """Soft-target distillation: T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) (Hinton et al. 2015).

  The T² factor keeps gradient magnitudes comparable across temperatures: ∂/∂z_s of the KL at T is
  (p_s^T − p_t^T)/T, and for large T, p^T ≈ 1/C + (z − mean z)/(C·T), so T²·grad → (z_s − z_t)/C
  (centred), independent of T. Multilabel heads use one Bernoulli per class, mean over classes.

  Args:
    student_logits_BxC, teacher_logits_BxC: logits (teacher is not differentiated).
    valid_B: float mask, 1 for real rows.
    temperature: T > 0.
    multilabel: per-class sigmoid instead of softmax.

  Returns:
    (loss, {"kl"}) with the unscaled KL in metrics for monitoring.
  """
  t = temperature
  logp_t = jax.lax.stop_gradient(_log_probs(teacher_logits_BxC, t, multilabel))
  logp_s = _log_probs(student_logits_BxC, t, multilabel)
  kl = _masked_mean(_kl_rows(logp_t, logp_s, multilabel), valid_B)
  return kl * t * t, {"kl": kl}


def kd_reverse_kl(*, student_logits_BxC: Array, teacher_logits_BxC: Array, valid_B: Array,
                  temperature: float = 1.0, multilabel: bool = False) -> LossOut:
  """Reverse KL, T² · KL(p_s^T ‖ p_t^T): mode-seeking (Gu et al. 2024, MiniLLM).

  Returns:
    (loss, {"reverse_kl"}) with the unscaled KL in metrics.
  """
  t = temperature
  logp_t = jax.lax.stop_gradient(_log_probs(teacher_logits_BxC, t, multilabel))
  logp_s = _log_probs(student_logits_BxC, t, multilabel)
  kl = _masked_mean(_kl_rows(logp_s, logp_t, multilabel), valid_B)
  return kl * t * t, {"reverse_kl": kl}


def kd_mse(*, student_logits_BxC: Array, teacher_logits_BxC: Array, valid_B: Array) -> LossOut:
  """Logit matching: mean squared error between logits (Ba & Caruana 2014), mean over classes.

  Returns:
    (loss, {"mse"}).
  """
  diff_BxC = _f32(student_logits_BxC) - jax.lax.stop_gradient(_f32(teacher_logits_BxC))
  loss = _masked_mean(jnp.mean(diff_BxC**2, -1), valid_B)
  return loss, {"mse": loss}


def kd_topk(*, student_logits_BxC: Array, teacher_logits_BxC: Array, valid_B: Array,
            temperature: float = 1.0, k: int = 8) -> LossOut:
  """KL restricted to the teacher's top-k classes, both distributions renormalised over them.

  For large output spaces (vocabularies) where storing or comparing all C logits is wasteful; the
  tail mass is dropped (as in sparse/top-k logit caching for KD). With k >= C this is `kd_kl`.

  Args:
    k: number of teacher classes kept (clipped to C).

  Returns:
    (T² · KL over the top-k, {"kl", "topk_mass"}), "topk_mass" = teacher probability (at T) kept.
  """
  if int(k) < 1:
    raise ValueError(f"kd_topk: k={k}; keep at least one class (top_k >= 1).")
  t = temperature
  teacher_logits_BxC = jax.lax.stop_gradient(_f32(teacher_logits_BxC))
  k = min(int(k), teacher_logits_BxC.shape[-1])
  top_t_BxK, idx_BxK = jax.lax.top_k(teacher_logits_BxC, k)
  top_s_BxK = jnp.take_along_axis(_f32(student_logits_BxC), idx_BxK, -1)
  logp_t = jax.nn.log_softmax(top_t_BxK / t, -1)
  logp_s = jax.nn.log_softmax(top_s_BxK / t, -1)
  kl = _masked_mean(_kl_rows(logp_t, logp_s, False), valid_B)
  probs_t_BxC = jax.nn.softmax(teacher_logits_BxC / t, -1)
  mass_B = jnp.sum(jnp.take_along_axis(probs_t_BxC, idx_BxK, -1), -1)
  return kl * t * t, {"kl": kl, "topk_mass": _masked_mean(mass_B, valid_B)}


def multi_teacher_kl(*, student_logits_BxC: Array, teacher_logits: Sequence[Array], valid_B: Array,
                     temperature: float = 1.0, teacher_weights: Sequence[float] | None = None,
                     per_teacher: bool = False, multilabel: bool = False) -> LossOut:
  """Distillation from several teachers.

  Default: KL to the weighted average of the teachers' temperature-T probabilities (an ensemble
  teacher, as in Hinton et al. 2015 §2 / You et al. 2017). `per_teacher=True`: weighted sum of the
  per-teacher KLs instead (Fukuda et al. 2017). Both × T². With one teacher both equal `kd_kl`.

  Args:
    teacher_logits: one B×C array per teacher.
    teacher_weights: non-negative weights, normalised to sum 1; None -> uniform.
    per_teacher: average the losses instead of the distributions.

  Returns:
    (loss, {"kl", "kl_teacher_{i}"...}).
  """
  n = len(teacher_logits)
  if n == 0:
    raise ValueError("multi_teacher_kl: teacher_logits is empty; pass one B×C array per teacher.")
  w = _teacher_weights(teacher_weights, n)
  t = temperature
  logp_s = _log_probs(student_logits_BxC, t, multilabel)
  logp_ts = [jax.lax.stop_gradient(_log_probs(z, t, multilabel)) for z in teacher_logits]
  metrics = {f"kl_teacher_{i}": _masked_mean(_kl_rows(lp, logp_s, multilabel), valid_B)
             for i, lp in enumerate(logp_ts)}
  if per_teacher:
    kl = sum(wi * metrics[f"kl_teacher_{i}"] for i, wi in enumerate(w))
  else:
    # log Σ_i w_i p_i, computed stably in log space.
    logp_t = jax.nn.logsumexp(jnp.stack(logp_ts), axis=0, b=jnp.asarray(w).reshape(
        (n,) + (1,) * logp_ts[0].ndim))
    kl = _masked_mean(_kl_rows(logp_t, logp_s, multilabel), valid_B)
  metrics["kl"] = kl
  return kl * t * t, metrics


def _teacher_weights(teacher_weights: Sequence[float] | None, n: int) -> list[float]:
  if teacher_weights is None or len(teacher_weights) == 0:
    return [1.0 / n] * n
  if len(teacher_weights) != n:
    raise ValueError(f"teacher_weights has {len(teacher_weights)} entries for {n} teachers; "
                     "give one weight per teacher (or none for uniform).")
  w = [float(x) for x in teacher_weights]
  if min(w) < 0 or sum(w) <= 0:
    raise ValueError(f"teacher_weights {w} must be non-negative with a positive sum.")
  return [x / sum(w) for x in w]


# ----------------------------------------------------------------------------- feature distillation


def init_projections(rng: Array, student_dim: int, teacher_dim: int, n: int) -> dict[str, Any]:
  """Learned student->teacher width projections for `hidden_mse` (TinyBERT's W_h, Jiao et al. 2020).

  Returns `{"proj_{i}": {"kernel": Ds×Dt, "bias": Dt}}` for i < n: pass n = len(layer_map) for one
  projection per distilled layer, or n = 1 for a single shared W_h (as in TinyBERT). Returns {}
  when the widths match (identity; no extra parameters). The dict is trained with the student:
  keep it beside the student params (e.g. `params["kd_proj"]`) and drop it before `model.apply`.
  """
  if student_dim == teacher_dim:
    return {}
  if n < 1:
    raise ValueError(f"init_projections: n={n}; need at least one projection.")
  keys = jax.random.split(rng, n)
  init = jax.nn.initializers.lecun_normal()
  return {f"proj_{i}": {"kernel": init(keys[i], (student_dim, teacher_dim), jnp.float32),
                        "bias": jnp.zeros((teacher_dim,), jnp.float32)} for i in range(n)}


def default_layer_map(num_student_layers: int, num_teacher_layers: int) -> tuple[int, ...]:
  """TinyBERT's uniform map: student layer i <- teacher layer (i+1)·Lt/Ls − 1 (last ↔ last)."""
  return tuple((i + 1) * num_teacher_layers // num_student_layers - 1
               for i in range(num_student_layers))


def hidden_mse(*, student_hidden: Sequence[Array], teacher_hidden: Sequence[Array],
               mask_BxL: Array, valid_B: Array, layer_map: Sequence[int],
               proj_params: Mapping[str, Any] | None = None) -> LossOut:
  """Hidden-state MSE over mapped layers (TinyBERT, Jiao et al. 2020, eq. 8).

  Student layer i's output (hidden_states[i + 1]; index 0 is the embeddings) is projected by
  `proj_{i}` (or the shared `proj_0`) when widths differ and compared to teacher layer
  layer_map[i]'s output. MSE is a mean over real tokens and the teacher width, then averaged over
  the mapped layers (not summed, so the weight does not scale with depth).

  Args:
    student_hidden: tuple of Ls+1 arrays B×L×Ds (model output "hidden_states").
    teacher_hidden: tuple of Lt+1 arrays B×L×Dt.
    mask_BxL: attention mask (1 real token).
    valid_B: float mask, 1 for real rows.
    layer_map: student layer i <- teacher layer layer_map[i]; len(layer_map) <= Ls.
    proj_params: from `init_projections`; {} or None when widths match.

  Returns:
    (loss, {"mse_layer_{i}"...}).
  """
  ls, lt = len(student_hidden) - 1, len(teacher_hidden) - 1
  check_layer_map(layer_map, ls, lt)
  proj_params = proj_params or {}
  metrics, losses = {}, []
  for i, j in enumerate(layer_map):
    h_s = _f32(student_hidden[i + 1])
    h_t = jax.lax.stop_gradient(_f32(teacher_hidden[j + 1]))
    if proj_params:
      p = proj_params.get(f"proj_{i}", proj_params["proj_0"] if len(proj_params) == 1 else None)
      if p is None:
        raise ValueError(f"hidden_mse: proj_params has {len(proj_params)} projections but "
                         f"layer_map has {len(layer_map)} entries; init_projections(n=1 or "
                         f"n={len(layer_map)}).")
      h_s = h_s @ _f32(p["kernel"]) + _f32(p["bias"])
    if h_s.shape[-1] != h_t.shape[-1]:
      raise ValueError(f"hidden_mse: student width {h_s.shape[-1]} != teacher width "
                       f"{h_t.shape[-1]}; pass proj_params=init_projections(rng, "
                       f"{h_s.shape[-1]}, {h_t.shape[-1]}, n).")
    loss = _masked_mean(_tokens_mean(jnp.mean((h_s - h_t)**2, -1), mask_BxL), valid_B)
    metrics[f"mse_layer_{i}"] = loss
    losses.append(loss)
  return sum(losses) / len(losses), metrics


def attention_kl(*, student_attn_BxHxLxL: Array, teacher_attn_BxHxLxL: Array, mask_BxL: Array,
                 valid_B: Array) -> LossOut:
  """Self-attention distribution transfer: KL(A_t ‖ A_s) (MiniLM, Wang et al. 2020, eq. 3).

  Pass the last layer's attention probabilities. KL over keys, mean over heads and real queries;
  padded keys and queries are masked out. MiniLM requires equal head counts; when they differ we
  average the attention distributions over heads on each side first (a mean of distributions is a
  distribution), which keeps the loss defined but transfers less per-head structure. MiniLM's
  value-relation term is not included (the model contract does not expose values).

  Returns:
    (loss, {"attn_kl"}).
  """
  a_s = _f32(student_attn_BxHxLxL)
  a_t = jax.lax.stop_gradient(_f32(teacher_attn_BxHxLxL))
  if a_s.shape[1] != a_t.shape[1]:
    a_s = jnp.mean(a_s, 1, keepdims=True)
    a_t = jnp.mean(a_t, 1, keepdims=True)
  key_mask = _f32(mask_BxL)[:, None, None, :]
  # Masked keys hold ~0 mass; drop them and guard log(0) so gradients stay finite.
  kl_BxHxL = jnp.sum(key_mask * a_t * (jnp.log(jnp.maximum(a_t, _LOG_EPS))
                                       - jnp.log(jnp.maximum(a_s, _LOG_EPS))), -1)
  kl_B = _tokens_mean(jnp.mean(kl_BxHxL, 1), mask_BxL)
  loss = _masked_mean(kl_B, valid_B)
  return loss, {"attn_kl": loss}


def cosine_embedding(*, student_hidden_BxLxD: Array, teacher_hidden_BxLxD: Array, mask_BxL: Array,
                     valid_B: Array) -> LossOut:
  """Cosine embedding loss 1 − cos(h_s, h_t) per token, mean over real tokens (DistilBERT,
  Sanh et al. 2019, "L_cos" on the last hidden states). Widths must match.

  Returns:
    (loss, {"cosine"}) where "cosine" is the mean cosine similarity.
  """
  h_s = _f32(student_hidden_BxLxD)
  h_t = jax.lax.stop_gradient(_f32(teacher_hidden_BxLxD))
  if h_s.shape[-1] != h_t.shape[-1]:
    raise ValueError(f"cosine: student width {h_s.shape[-1]} != teacher width {h_t.shape[-1]}; "
                     "use hidden_mse with init_projections for students of another width.")
  cos_BxL = jnp.sum(h_s * h_t, -1) / jnp.maximum(
      jnp.linalg.norm(h_s, axis=-1) * jnp.linalg.norm(h_t, axis=-1), 1e-8)
  cos = _masked_mean(_tokens_mean(cos_BxL, mask_BxL), valid_B)
  return 1.0 - cos, {"cosine": cos}


def check_layer_map(layer_map: Sequence[int], num_student_layers: int,
                    num_teacher_layers: int) -> None:
  """Raises ValueError unless layer_map maps <= Ls student layers to teacher layers in [0, Lt)."""
  if len(layer_map) == 0:
    raise ValueError("layer_map is empty; set distill.layer_map (student layer i <- teacher layer "
                     "layer_map[i]) or leave it () in the config for the uniform default map.")
  if len(layer_map) > num_student_layers:
    raise ValueError(f"layer_map {tuple(layer_map)} has {len(layer_map)} entries but the student "
                     f"has {num_student_layers} layers; give at most one teacher layer per student "
                     "layer.")
  bad = [j for j in layer_map if not 0 <= int(j) < num_teacher_layers]
  if bad:
    raise ValueError(f"layer_map {tuple(layer_map)}: teacher layers {bad} out of range; the "
                     f"teacher has layers 0..{num_teacher_layers - 1}.")


# ----------------------------------------------------------------------------- registry

# What a term needs beyond the student's "logits" (see `required_outputs`): "teacher" (teacher
# outputs), "hidden_states", "attentions", and "labels" (it reads the ground truth batch["label"]).
_REQUIRES_ATTR = "requires"
LABELS = "labels"
PROJ_KEY = "kd_proj"  # params[PROJ_KEY]: `init_projections`, trained with the student


def _requires(*outputs: str) -> Callable[[Callable], Callable]:
  def mark(fn):
    setattr(fn, _REQUIRES_ATTR, frozenset(outputs))
    return fn
  return mark


def _teacher_logits(name: str, teacher_out: Mapping[str, Any] | None) -> Array:
  """The single teacher's logits; a one-element list is accepted."""
  if teacher_out is None or "logits" not in teacher_out:
    raise ValueError(f"loss '{name}' needs teacher_out['logits']; pass teacher outputs (or cached "
                     "teacher logits) or drop it from distill.losses.")
  z = teacher_out["logits"]
  if isinstance(z, (list, tuple)):
    if len(z) != 1:
      raise ValueError(f"loss '{name}' takes one teacher but got {len(z)}; use 'multi_kl' or "
                       "'multi_kl_each' for several teachers.")
    z = z[0]
  return z


def _hidden(name: str, out: Mapping[str, Any] | None, who: str) -> Sequence[Array]:
  if out is None or out.get("hidden_states") is None:
    raise ValueError(f"loss '{name}' needs {who}_out['hidden_states']; call the {who} with "
                     "output_hidden_states=True (see losses.required_outputs).")
  return out["hidden_states"]


def _attentions(name: str, out: Mapping[str, Any] | None, who: str) -> Sequence[Array]:
  if out is None or out.get("attentions") is None:
    raise ValueError(f"loss '{name}' needs {who}_out['attentions']; call the {who} with "
                     "output_attentions=True (see losses.required_outputs).")
  return out["attentions"]


@_requires(LABELS)
def _ce_term(*, student_out, batch, label_smoothing, multilabel, **_) -> LossOut:
  if "label" not in batch:
    raise ValueError("loss 'ce' needs batch['label']; drop 'ce' from distill.losses for unlabeled "
                     "(transfer-set) training.")
  if multilabel:
    return sigmoid_cross_entropy(logits_BxC=student_out["logits"], labels_BxC=batch["label"],
                                 valid_B=batch["valid"], label_smoothing=label_smoothing)
  return cross_entropy(logits_BxC=student_out["logits"], labels_B=batch["label"],
                       valid_B=batch["valid"], label_smoothing=label_smoothing)


@_requires("teacher")
def _kd_kl_term(*, student_out, teacher_out, batch, temperature, multilabel, **_) -> LossOut:
  return kd_kl(student_logits_BxC=student_out["logits"],
               teacher_logits_BxC=_teacher_logits("kd_kl", teacher_out), valid_B=batch["valid"],
               temperature=temperature, multilabel=multilabel)


@_requires("teacher")
def _kd_reverse_kl_term(*, student_out, teacher_out, batch, temperature, multilabel,
                        **_) -> LossOut:
  return kd_reverse_kl(student_logits_BxC=student_out["logits"],
                       teacher_logits_BxC=_teacher_logits("kd_reverse_kl", teacher_out),
                       valid_B=batch["valid"], temperature=temperature, multilabel=multilabel)


@_requires("teacher")
def _kd_mse_term(*, student_out, teacher_out, batch, **_) -> LossOut:
  return kd_mse(student_logits_BxC=student_out["logits"],
                teacher_logits_BxC=_teacher_logits("kd_mse", teacher_out), valid_B=batch["valid"])


@_requires("teacher")
def _kd_topk_term(*, student_out, teacher_out, batch, temperature, top_k, multilabel,
                  **_) -> LossOut:
  if multilabel:
    raise ValueError("loss 'kd_topk' is for softmax heads; use 'kd_kl' for multilabel tasks.")
  return kd_topk(student_logits_BxC=student_out["logits"],
                 teacher_logits_BxC=_teacher_logits("kd_topk", teacher_out),
                 valid_B=batch["valid"], temperature=temperature, k=top_k)


@_requires("teacher")
def _labels_only_term(*, student_out, teacher_out, batch, label_smoothing, multilabel,
                      **_) -> LossOut:
  return labels_only(student_logits_BxC=student_out["logits"],
                     teacher_logits_BxC=_teacher_logits("labels_only", teacher_out),
                     valid_B=batch["valid"], label_smoothing=label_smoothing,
                     multilabel=multilabel)


def _multi(per_teacher: bool):
  name = "multi_kl_each" if per_teacher else "multi_kl"

  @_requires("teacher")
  def term(*, student_out, teacher_out, batch, temperature, teacher_weights, multilabel,
           **_) -> LossOut:
    if teacher_out is None or "logits" not in teacher_out:
      raise ValueError(f"loss '{name}' needs teacher_out['logits'] (a list, one per teacher).")
    zs = teacher_out["logits"]
    zs = list(zs) if isinstance(zs, (list, tuple)) else [zs]
    return multi_teacher_kl(student_logits_BxC=student_out["logits"], teacher_logits=zs,
                            valid_B=batch["valid"], temperature=temperature,
                            teacher_weights=teacher_weights, per_teacher=per_teacher,
                            multilabel=multilabel)
  return term


@_requires("teacher", "hidden_states")
def _hidden_mse_term(*, student_out, teacher_out, batch, layer_map, proj_params, **_) -> LossOut:
  h_s = _hidden("hidden_mse", student_out, "student")
  h_t = _hidden("hidden_mse", teacher_out, "teacher")
  if not layer_map:
    layer_map = default_layer_map(len(h_s) - 1, len(h_t) - 1)
  return hidden_mse(student_hidden=h_s, teacher_hidden=h_t, mask_BxL=batch["attention_mask"],
                    valid_B=batch["valid"], layer_map=layer_map, proj_params=proj_params)


@_requires("teacher", "attentions")
def _attn_kl_term(*, student_out, teacher_out, batch, **_) -> LossOut:
  return attention_kl(student_attn_BxHxLxL=_attentions("attn_kl", student_out, "student")[-1],
                      teacher_attn_BxHxLxL=_attentions("attn_kl", teacher_out, "teacher")[-1],
                      mask_BxL=batch["attention_mask"], valid_B=batch["valid"])


@_requires("teacher", "hidden_states")
def _cosine_term(*, student_out, teacher_out, batch, **_) -> LossOut:
  return cosine_embedding(student_hidden_BxLxD=_hidden("cosine", student_out, "student")[-1],
                          teacher_hidden_BxLxD=_hidden("cosine", teacher_out, "teacher")[-1],
                          mask_BxL=batch["attention_mask"], valid_B=batch["valid"])


def _token_term(kind: str):
  """A decoder's token-level KD term (research/token_losses.py) on the answer positions.

  Reads student_out["logits"] B×A×V, batch["answer_mask"] B×A, and either teacher_out["logits"]
  (B×A×V, a teacher run alongside) or teacher_out["topk_ids"] / ["topk_logprobs"] (a cache).
  """
  name = {"forward": "tok_kl", "reverse": "tok_reverse_kl", "jsd": "tok_jsd"}[kind]

  @_requires("teacher")
  def term(*, student_out, teacher_out, batch, temperature, beta=0.5, vocab_chunk=0,
           **_) -> LossOut:
    if "answer_mask" not in batch:
      raise ValueError(f"loss '{name}' is token-level: it needs a causal_lm task "
                       "(batch['answer_mask']); use 'kd_kl' for classifiers.")
    kw = dict(student_logits_BxAxV=student_out["logits"], mask_BxA=batch["answer_mask"],
              kind=kind, temperature=temperature, beta=beta, vocab_chunk=vocab_chunk)
    if teacher_out is not None and "topk_ids" in teacher_out:
      return token_losses.token_divergence_topk(
          teacher_ids_BxAxK=teacher_out["topk_ids"],
          teacher_logprobs_BxAxK1=teacher_out["topk_logprobs"], **kw)
    return token_losses.token_divergence(
        teacher_logits_BxAxV=_teacher_logits(name, teacher_out), **kw)
  return term


# Config name -> term. A term takes keyword arguments student_out, teacher_out, batch, temperature,
# layer_map, proj_params, teacher_weights, label_smoothing, top_k, multilabel (ignoring the rest
# via **_) and returns (scalar, metrics).
LOSSES: dict[str, Callable[..., LossOut]] = {
    "ce": _ce_term,
    "kd_kl": _kd_kl_term,
    "kd_reverse_kl": _kd_reverse_kl_term,
    "kd_mse": _kd_mse_term,
    "kd_topk": _kd_topk_term,
    "labels_only": _labels_only_term,
    "multi_kl": _multi(per_teacher=False),
    "multi_kl_each": _multi(per_teacher=True),
    "hidden_mse": _hidden_mse_term,
    "attn_kl": _attn_kl_term,
    "cosine": _cosine_term,
    "tok_kl": _token_term("forward"),
    "tok_reverse_kl": _token_term("reverse"),
    "tok_jsd": _token_term("jsd"),
}


def check_loss_weights(weights: Mapping[str, float]) -> dict[str, float]:
  """Validates config loss weights; returns the terms with non-zero weight.

  Raises:
    ValueError: unknown name (listing the known ones), negative or non-finite weight, or nothing
      left to optimise.
  """
  unknown = sorted(set(weights) - set(LOSSES))
  if unknown:
    raise ValueError(f"unknown loss name(s) {unknown} in distill.losses; known: {sorted(LOSSES)}.")
  out = {}
  for name, w in weights.items():
    w = float(w)
    if not math.isfinite(w) or w < 0:
      raise ValueError(f"loss weight {name}={w} must be finite and >= 0.")
    if w > 0:
      out[name] = w
  if not out:
    raise ValueError(f"distill.losses {dict(weights)} has no positive weight; give at least one "
                     "loss a weight > 0.")
  return out


def required_outputs(weights: Mapping[str, float]) -> frozenset[str]:
  """What the active terms need: a subset of {"teacher", "hidden_states", "attentions"}.

  Use it to decide whether to run the teacher and to pass output_hidden_states /
  output_attentions to both models (both cost memory).
  """
  return frozenset().union(*(getattr(LOSSES[n], _REQUIRES_ATTR, frozenset())
                             for n in check_loss_weights(weights)))


def reads_labels(weights: Mapping[str, float]) -> bool:
  """Whether any active term reads ground-truth labels (the table's labeled-data column)."""
  return LABELS in required_outputs(weights)


def register(name: str, term: Callable[..., LossOut], *, requires: Sequence[str] = ()) -> None:
  """Adds a loss term under `name` (usable in distill.losses); `requires` as `_requires`."""
  LOSSES[name] = _requires(*requires)(term)


def combined_loss(weights: Mapping[str, float], *, student_out: Mapping[str, Any],
                  teacher_out: Mapping[str, Any] | None = None, batch: Mapping[str, Any],
                  temperature: float = 1.0, layer_map: Sequence[int] = (),
                  proj_params: Mapping[str, Any] | None = None,
                  teacher_weights: Sequence[float] | None = None, label_smoothing: float = 0.0,
                  top_k: int = 8, multilabel: bool | None = None, beta: float = 0.5,
                  vocab_chunk: int = 0) -> LossOut:
  """Σ_name weights[name] · LOSSES[name](...), e.g. {"ce": 1 − α, "kd_kl": α} (Hinton et al. 2015).

  Args:
    weights: loss name -> weight (c.distill.losses); zero-weight terms are not computed.
    student_out: student model output dict ("logits" B×C; "hidden_states", "attentions" if needed).
    teacher_out: teacher output dict, or {"logits": [B×C, ...]} for several teachers, or
      {"logits": cached B×C}; gradients are stopped.
    batch: batch dict ("valid", "attention_mask", "label" when a label loss is used).
    temperature: KD temperature T.
    layer_map: student layer i <- teacher layer layer_map[i] (hidden_mse); () -> uniform map.
    proj_params: `init_projections` output, trained with the student.
    teacher_weights: multi-teacher weights; None -> uniform.
    label_smoothing: for "ce" and "labels_only".
    top_k: classes kept by "kd_topk".
    multilabel: None -> inferred from batch["label"] (B×C) or the logits if unlabeled: False.
    beta: the GKD mixture weight of "tok_jsd" (research/token_losses.py).
    vocab_chunk: vocabulary chunk of the token-level terms (0: one chunk).

  Returns:
    (total loss, metrics) with metrics "loss", "loss/<name>" per term and "<name>/<metric>".
  """
  active = check_loss_weights(weights)
  if not temperature > 0:
    raise ValueError(f"temperature={temperature}; distill.temperature must be > 0.")
  if teacher_out is not None:
    teacher_out = jax.tree.map(jax.lax.stop_gradient, dict(teacher_out))
  if multilabel is None:
    multilabel = "label" in batch and jnp.ndim(batch["label"]) == 2
  total = jnp.zeros((), jnp.float32)
  metrics: Metrics = {}
  for name, w in active.items():
    loss, m = LOSSES[name](student_out=student_out, teacher_out=teacher_out, batch=batch,
                           temperature=temperature, layer_map=tuple(layer_map),
                           proj_params=proj_params, teacher_weights=teacher_weights,
                           label_smoothing=label_smoothing, top_k=top_k, multilabel=multilabel,
                           beta=beta, vocab_chunk=vocab_chunk)
    total = total + w * loss
    metrics[f"loss/{name}"] = loss
    metrics.update({f"{name}/{k}": v for k, v in m.items()})
  metrics["loss"] = total
  return total, metrics

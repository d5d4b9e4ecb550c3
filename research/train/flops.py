"""Training FLOPs of a run: XLA's count of each compiled step, and the family's analytic count."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from research import cost


def step_flops(step_fn: Callable, state: Any, batch: Any, aux: Any, analytic: float,
               grad_accum: int) -> tuple[float, str]:
  """FLOPs of one train step from XLA's cost analysis, else `analytic` (with the source)."""
  if not hasattr(step_fn, "lower") or getattr(step_fn, "num_devices", 1) != 1:
    # pmap and multi-device programs report one device's share: use the analytic count.
    return analytic, cost.SOURCE_ANALYTIC
  # Without gradient accumulation (a scan XLA counts once) the step's only loops are dropout's PRNG.
  return cost.step_flops(step_fn, state, batch, aux, analytic=analytic,
                         ignore_loops=grad_accum == 1)


def lowest_trained_layer(mask_cfg: Any, num_layers: int) -> int:
  """Where the backward pass stops: bitfit/lora/regex/full send gradients through every layer."""
  return {"head_only": num_layers, "last_k": num_layers - mask_cfg.k}.get(mask_cfg.rule, 0)


class FlopCounter:
  """Training FLOPs of one run: the analytic count always, XLA's count of each compiled step.

  XLA's count (`cost_analysis()` of the train step, once per batch width; the teacher's forward is
  inside the step) is reported when every step had one, else the analytic count.
  """

  def __init__(self, config: Any, setup: Any, position: Mapping[str, Any], *, resumed: bool):
    cfg, kd, fam = setup.model_cfg, setup.kd, setup.family
    lowest = lowest_trained_layer(config.mask, cfg.num_layers)
    batch, self._accum = config.data.batch_size, config.optim.grad_accum
    self._width = setup.task.batch_width
    # On-policy KD samples each answer token with one more student forward (no grad).
    samples = (getattr(setup.task, "max_answer", 0)
               if float(config.distill.get("on_policy", 0.0)) > 0 else 0)
    self._student = lambda width: (
        fam.analytic_flops(cfg, batch, width, True, trainable_from_layer=lowest)
        + samples * fam.analytic_flops(cfg, batch, width, False))
    self._teacher = ((lambda width: kd.teacher_forward_flops(batch, width)) if kd is not None
                     else (lambda width: 0.0))
    self.student = float(position.get("train_flops", 0.0))   # analytic, student steps
    self.teacher = float(position.get("teacher_flops", 0.0))  # analytic, teacher forwards
    self.xla = float(position.get("train_flops_xla", 0.0))
    self.all_xla = bool(position.get("train_flops_all_xla", not resumed))
    self._by_width: dict[int, tuple[float, str]] = {}

  def add(self, step_fn: Callable, state: Any, batch: Any, aux: Any) -> None:
    """Counts one step just taken (`state` is its output; the first of a width compiles)."""
    width = self._width(batch)
    student, teacher = self._student(width), self._teacher(width)
    self.student += student
    self.teacher += teacher
    if width not in self._by_width:
      self._by_width[width] = step_flops(step_fn, state, batch, aux, student + teacher,
                                         self._accum)
    flops, source = self._by_width[width]
    self.xla += flops
    self.all_xla = self.all_xla and source == cost.SOURCE_XLA

  def position(self) -> dict[str, Any]:
    """What a checkpoint keeps, so a resumed run continues the counts."""
    return {"train_flops": self.student, "teacher_flops": self.teacher,
            "train_flops_xla": self.xla, "train_flops_all_xla": self.all_xla}

  def record(self) -> dict[str, Any]:
    analytic = self.student + self.teacher
    return {"train_flops": self.xla if self.all_xla else analytic,
            "train_flops_source": cost.SOURCE_XLA if self.all_xla else cost.SOURCE_ANALYTIC,
            "train_flops_analytic": analytic, "teacher_flops": self.teacher}

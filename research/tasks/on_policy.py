"""On-policy distillation (GKD, Agarwal et al. 2024): a share λ of each batch's answers is the student's.

For a row picked with probability λ (`distill.on_policy`), the student samples its own answer at
temperature `distill.sample_temperature`, token by token, in the slots of the row's gold answer
(an answer is a few tokens here, so each token is one more forward pass without a KV cache, with
the student's params frozen); tokens after the first sampled stop id are masked out. The
teacher then scores the sampled tokens like any others (token-level KD terms), while the
ground-truth term ("ce") reads the gold rows only. Gradients never flow through the sampling.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp


def student_samples(apply: Any, params: Any, batch: Mapping[str, Any], rng: jax.Array, *,
                    fraction: float, temperature: float, stop_ids: Sequence[int] = ()) -> dict:
  """`batch` with the sampled rows' answer tokens replaced (needs answer_positions' keys).

  Returns the batch with new "input_ids", "answer_ids", "answer_mask" (sampled tokens after an
  end-of-turn off), "gold_mask" (answer_mask of the rows that kept the gold answer) and
  "on_policy" (B, 1.0 where the student answered).
  """
  params = jax.lax.stop_gradient(params)
  ids, pos, mask = (jnp.asarray(batch[k]) for k in ("input_ids", "logit_positions", "answer_mask"))
  B, A = pos.shape
  rows = jnp.arange(B)
  pick_rng, *tok_rngs = jax.random.split(rng, A + 1)
  student = (jax.random.uniform(pick_rng, (B,)) < fraction) & (mask[:, 0] > 0)
  n = jnp.sum(mask > 0, axis=1).astype(jnp.int32)
  # The answer ends at any stop id of the tokenizer, or (none given) at the gold answer's last token.
  end_B = jnp.take_along_axis(batch["answer_ids"], jnp.maximum(n - 1, 0)[:, None], 1)
  stops = jnp.asarray(tuple(stop_ids), ids.dtype)[None, :] if stop_ids else end_B
  for a in range(A):  # A is static and small: the longest answer of the task
    logits = apply(params, {**batch, "input_ids": ids, "logit_positions": pos[:, a:a + 1]},
                   deterministic=True)["logits"][:, 0].astype(jnp.float32)
    tok = jax.random.categorical(tok_rngs[a], logits / temperature).astype(ids.dtype)
    write = student & (mask[:, a] > 0)
    ids = ids.at[rows, pos[:, a] + 1].set(jnp.where(write, tok, ids[rows, pos[:, a] + 1]))
  answer_ids = jnp.take_along_axis(ids, pos + 1, 1)
  # After the first sampled end-of-turn the answer is over: later slots are not the student's text.
  is_stop = jnp.any(answer_ids[..., None] == stops[:, None, :], axis=-1)
  ended = jnp.cumsum(is_stop, axis=1) - is_stop
  keep = jnp.where(student[:, None], ended == 0, True)
  on = student.astype(jnp.float32)
  return {**batch, "input_ids": ids, "answer_ids": answer_ids, "answer_mask": mask * keep,
          "gold_mask": mask * (1.0 - on)[:, None], "on_policy": on}

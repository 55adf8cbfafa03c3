"""JAX side of `cargo bench --bench tasks -- rnnlm tlm`: the JAX library's own LM task code.

* `rnnlm.lstm128.*`: `tasks/fixed/rnn_lm.py`'s `TeacherForcedRNNLM(hk.LSTM(128),
  embedding_dim=64)` (the network of `RNNLM_lm1bbytes_Patch32_LSTM128_Embed64`) on random
  byte batches `[128, 32]` with `vocab_size` 256;
* `tlm.d128l1.*`: `tasks/fixed/transformer_lm.py`'s `_TransformerTask` at
  `TransformerLM_LM1B_MultiRuntime_8` ({heads 4, d_model 128, layers 1, batch 64,
  sequence 32, dropout 0}), with its hard-coded `lm1b_32k_datasets` replaced by random
  byte batches and `extra_info['vocab_size'] = 256` (lo-tasks.md's substitution).

`<id>.grad` is one call of `jit(value_and_grad(task.loss))`; `<id>.train_100` is 100
`optax.adam(1e-3)` steps inside one jit (`lax.scan` over 10 fixed batches, as the
library's truncated unrolls run), reported per step. Warm-up (compile) first, then 7
interleaved rounds of calls lasting about 0.3 s. Prints
`bench <id> median_s=<f> min_s=<f> max_s=<f> n=<int>`.

The library is imported from a checkout given by `LO_SRC` (a directory holding the
`learned_optimization` package with its `tasks/`; e.g. `git archive` of the library's
mirror). TensorFlow, tfds and seqio are only needed by the dataset readers, which are not
used; they are stubbed when missing. Usage:
`LO_SRC=/path python3 scripts/jax/bench_lm_tasks.py [substring...]`. With
`LOPT_BENCH_CLOCK=cpu` (as for the Rust side) the samples are the CPU seconds of all the
process's threads (`time.process_time`), and a `wall` line per case gives the wall time
and the CPU/wall ratio (how many threads XLA kept busy).
"""

import os
import statistics
import sys
import time
from unittest import mock

for _name in ["tensorflow", "tensorflow.compat", "tensorflow.compat.v1",
              "tensorflow.compat.v2", "tensorflow_datasets", "seqio",
              "seqio.vocabularies", "sentencepiece"]:
  try:
    __import__(_name)
  except ImportError:
    sys.modules[_name] = mock.MagicMock()

sys.path.insert(0, os.environ.get("LO_SRC", "/tmp/lo"))

import haiku as hk  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax
from learned_optimization.tasks.datasets import language
from learned_optimization.tasks.fixed import rnn_lm
from learned_optimization.tasks.fixed import transformer_lm


class FakeDatasets:
  """What the tasks read of a `Datasets`: `extra_info` and `abstract_batch`."""

  def __init__(self, batch, seq, vocab=256):
    self.extra_info = {"vocab_size": vocab}
    spec = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    self.abstract_batch = {"obs": spec, "target": spec}


def batches(rng, n, batch, seq):
  ids = rng.integers(1, 256, size=(n, batch, seq + 1)).astype(np.int32)
  return {"obs": jnp.asarray(ids[:, :, :-1]), "target": jnp.asarray(ids[:, :, 1:])}


def cases(rng):
  out = []
  rnn = rnn_lm.TeacherForcedRNNLM(lambda: hk.LSTM(128), 64, None,
                                  FakeDatasets(128, 32))
  language.lm1b_32k_datasets = lambda b, s: FakeDatasets(b, s)
  cfg = {"num_heads": 4, "d_model": 128, "num_layers": 1, "batch_size": 64,
         "sequence_length": 32, "dropout_rate": 0.0}
  tlm = transformer_lm._TransformerTask(cfg, name="MultiRuntime_8")  # pylint: disable=protected-access
  for prefix, task, b in [("rnnlm.lstm128", rnn, 128), ("tlm.d128l1", tlm, 64)]:
    data = batches(rng, 10, b, 32)
    params = task.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    vg = jax.jit(jax.value_and_grad(task.loss))
    one = jax.tree_util.tree_map(lambda x: x[0], data)
    out.append((prefix + ".grad", lambda vg=vg, p=params, k=key, d=one: vg(p, k, d), 1))
    opt = optax.adam(1e-3)

    def train(params, data, task=task, opt=opt):
      state = opt.init(params)

      def step(carry, i):
        p, s = carry
        d = jax.tree_util.tree_map(lambda x: x[i % 10], data)
        l, g = jax.value_and_grad(task.loss)(p, jax.random.PRNGKey(0), d)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), l

      (p, _), ls = jax.lax.scan(step, (params, state), jnp.arange(100))
      return p, ls[-1]

    tr = jax.jit(train)
    out.append((prefix + ".train_100", lambda tr=tr, p=params, d=data: tr(p, d), 100))
  return out


def main():
  filters = [a for a in sys.argv[1:] if not a.startswith("--")]
  rng = np.random.default_rng(7)
  cs = [c for c in cases(rng) if not filters or any(f in c[0] for f in filters)]
  reps = {}
  for cid, fn, _ in cs:
    jax.block_until_ready(fn())  # compile
    t = time.perf_counter()
    jax.block_until_ready(fn())
    one = time.perf_counter() - t
    reps[cid] = max(1, int(np.ceil(0.3 / one)))
  samples = {c[0]: [] for c in cs}
  # LOPT_BENCH_CLOCK=cpu: CPU seconds of all the process's threads (as the Rust side).
  clock = (time.process_time if os.environ.get("LOPT_BENCH_CLOCK") == "cpu"
           else time.perf_counter)
  walls = {c[0]: [] for c in cs}
  for _ in range(7):
    for cid, fn, units in cs:
      w = time.perf_counter()
      t = clock()
      for _ in range(reps[cid]):
        jax.block_until_ready(fn())
      samples[cid].append((clock() - t) / (reps[cid] * units))
      walls[cid].append((time.perf_counter() - w) / (reps[cid] * units))
  for cid, _, _ in cs:
    s = sorted(samples[cid])
    print(f"bench {cid} median_s={statistics.median(s):.9f} min_s={s[0]:.9f} "
          f"max_s={s[-1]:.9f} n={len(s)}")
    if clock is time.process_time:
      print(f"wall {cid} median_s={statistics.median(walls[cid]):.9f} "
            f"(CPU/wall {statistics.median(s) / statistics.median(walls[cid]):.2f}: "
            "threads XLA kept busy)")


if __name__ == "__main__":
  main()

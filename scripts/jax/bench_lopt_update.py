#!/usr/bin/env python3
"""One update of each of the JAX library's learned optimizers, jitted, as
`cargo bench --bench lopt_update` measures lopt's (the same configurations, θ shapes and
parameter trees; θ from each side's own init: the update's cost does not depend on θ's
values).

Cases `update.<name>.<size>`:
  names  mlp_lopt (MLPLOpt()), adafac_mlp_lopt (AdafacMLPLOpt()), rnn_mlp_lopt
         (RNNMLPLOpt()), nn_adam (NNAdam()), learnable_sgdm (LearnableSGDM()), velo
         (HyperV2(lstm_hidden_size=512, param_inits=256,
         use_bugged_next_lstm_state=True): the released VeLO's configuration);
  sizes  2410: the image MLP's tree (haiku MLP 64 -> 32 -> 10: w [64,32], b [32],
         w [32,10], b [10]); 1m: {"b": [1000], "w": [1000, 1000]} (1,001,000).
Per case: `jax.jit(lambda s, g, l: opt.update(s, g, loss=l))` on a state from
`opt.init(params, num_steps=1000)`, the gradient 1e-3·params, warmed up (compile + 2
calls), then rounds interleaving the cases, each sample the mean of back-to-back blocked
calls (wall time, or with `LOPT_BENCH_CLOCK=cpu`, as on the Rust side, the CPU seconds of
all the process's threads: on a busy machine use it with single-threaded XLA, below). Prints `bench <id> median_s=<f> min_s=<f> max_s=<f> n=<int>` like lopt's benches.

Note: under jit on jax 0.10.2 RNNMLPLOpt's update is NaN from its first step (XLA folds
the `+ 1e-8` of `_LossNormalizer.corrected_mean`; see scripts/make_reference_lopt.py); the
computation timed is still the whole update.

    PYTHONPATH=/work/lo_src JAX_PLATFORMS=cpu python3 scripts/jax/bench_lopt_update.py
    # side by side with lopt, alternating which goes first, ratios per round:
    PYTHONPATH=/work/lo_src JAX_PLATFORMS=cpu python3 scripts/jax/bench_lopt_update.py \
        --with-lopt --rounds 3
    # single-threaded XLA (for the LOPT_BENCH_CLOCK=cpu comparison, which sums threads):
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" ...
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import make_reference_optimizers  # noqa: E402,F401  (installs the tensorflow stand-in)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from learned_optimization.learned_optimizers import adafac_mlp_lopt  # noqa: E402
from learned_optimization.learned_optimizers import base as lopt_base  # noqa: E402
from learned_optimization.learned_optimizers import mlp_lopt  # noqa: E402
from learned_optimization.learned_optimizers import nn_adam  # noqa: E402
from learned_optimization.learned_optimizers import rnn_mlp_lopt  # noqa: E402
from learned_optimization.research.general_lopt import hyper_v2  # noqa: E402

NUM_STEPS = 1000


def lopts():
  return {
      "mlp_lopt": mlp_lopt.MLPLOpt(),
      "adafac_mlp_lopt": adafac_mlp_lopt.AdafacMLPLOpt(),
      "rnn_mlp_lopt": rnn_mlp_lopt.RNNMLPLOpt(),
      "nn_adam": nn_adam.NNAdam(),
      "learnable_sgdm": lopt_base.LearnableSGDM(),
      "velo": hyper_v2.HyperV2(lstm_hidden_size=512, param_inits=256,
                               use_bugged_next_lstm_state=True),
  }


def trees():
  rng = np.random.RandomState(0)
  f = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.1)  # noqa: E731
  return {
      "2410": {"mlp/~/linear_0": {"b": f(32), "w": f(64, 32)},
               "mlp/~/linear_1": {"b": f(10), "w": f(32, 10)}},
      "1m": {"b": f(1000), "w": f(1000, 1000)},
  }


def make_case(lopt, params):
  theta = lopt.init(jax.random.PRNGKey(0))
  opt = lopt.opt_fn(theta)
  state = opt.init(params, num_steps=NUM_STEPS)
  grad = jax.tree_util.tree_map(lambda p: 1e-3 * p, params)
  loss = jnp.asarray(1.5, jnp.float32)
  if isinstance(lopt, hyper_v2.HyperV2):
    key = jax.random.PRNGKey(1)
    fn = jax.jit(lambda s, g, l: opt.update(s, g, loss=l, key=key))
  else:
    fn = jax.jit(lambda s, g, l: opt.update(s, g, loss=l))
  args = (state, grad, loss)
  for _ in range(3):  # compile, then warm up
    jax.block_until_ready(fn(*args))
  return fn, args


def measure(select, rounds, target_s):
  # LOPT_BENCH_CLOCK=cpu: CPU seconds of all the process's threads (as the Rust side).
  clock = (time.process_time if os.environ.get("LOPT_BENCH_CLOCK") == "cpu"
           else time.perf_counter)
  cases = []
  for name, lopt in lopts().items():
    for size, params in trees().items():
      cid = f"update.{name}.{size}"
      if select and not any(s in cid for s in select):
        continue
      cases.append([cid, *make_case(lopt, params), 1, []])
  for c in cases:  # calibrate: samples of about target_s
    _, fn, args, _, _ = c
    t = time.perf_counter()
    k = 0
    while time.perf_counter() - t < 0.05:
      jax.block_until_ready(fn(*args))
      k += 1
    c[3] = max(1, int(target_s / ((time.perf_counter() - t) / k)))
  for _ in range(rounds):
    for c in cases:
      _, fn, args, reps, samples = c
      t = clock()
      for _ in range(reps):
        jax.block_until_ready(fn(*args))
      samples.append((clock() - t) / reps)
  out = {}
  for cid, _, _, _, s in cases:
    s = sorted(s)
    med = statistics.median(s)
    out[cid] = med
    print(f"bench {cid} median_s={med:.9f} min_s={s[0]:.9f} max_s={s[-1]:.9f} "
          f"n={len(s)}", flush=True)
  return out


LINE = re.compile(r"^bench (\S+) median_s=(\S+)")


def run_lopt(select, binary=None):
  root = os.path.abspath(os.path.join(HERE, "..", ".."))
  cmd = ([binary] if binary else ["cargo", "bench", "--bench", "lopt_update", "--"]) + list(select)
  out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)
  print(out.stdout, end="", flush=True)
  return {m.group(1): float(m.group(2))
          for m in map(LINE.match, out.stdout.splitlines()) if m}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("select", nargs="*", help="substrings of case ids to keep")
  ap.add_argument("--rounds", type=int, default=1,
                  help="side-by-side rounds with --with-lopt")
  ap.add_argument("--samples", type=int, default=9, help="samples per case")
  ap.add_argument("--target-s", type=float, default=0.1, help="seconds per sample")
  ap.add_argument("--with-lopt", action="store_true",
                  help="alternate with `cargo bench --bench lopt_update`, print ratios")
  ap.add_argument("--lopt-bin", default=None,
                  help="with --with-lopt: run this built lopt_update binary instead of "
                  "`cargo bench` (no rebuild between rounds)")
  a = ap.parse_args()
  print(f"# jax {jax.__version__}, devices {jax.devices()}", flush=True)
  if not a.with_lopt:
    measure(a.select, a.samples, a.target_s)
    return
  for r in range(a.rounds):
    print(f"# round {r + 1}", flush=True)
    if r % 2 == 0:
      jx = measure(a.select, a.samples, a.target_s)
      lo = run_lopt(a.select, a.lopt_bin)
    else:
      lo = run_lopt(a.select, a.lopt_bin)
      jx = measure(a.select, a.samples, a.target_s)
    for cid in sorted(jx):
      if cid in lo:
        print(f"ratio {cid} jax/lopt={jx[cid] / lo[cid]:.2f}", flush=True)


if __name__ == "__main__":
  main()

#!/usr/bin/env python3
"""Reference trajectories of the baseline optimizers, from optax and the JAX library.

Writes tests/reference/baselines.json, read by tests/optimizers_reference.rs.

Run from the repository root with the JAX library's source on PYTHONPATH:

    git --git-dir=<mirror of google/learned_optimization> archive HEAD \
        learned_optimization | tar -x -C /work/lo_src     # (or any checkout)
    PYTHONPATH=/work/lo_src JAX_PLATFORMS=cpu python3 scripts/make_reference_optimizers.py

Packages used for the committed file: see the "versions" entry it writes (jax 0.10.2,
optax 0.2.8, flax, dm-haiku 0.0.17) and the library commit below.

The library's `filesystem` and `summary` modules import TensorFlow (for `tf.io.gfile` and
summary writing, neither used here); this script installs a tiny stand-in (plain `open`,
a no-op `enable_v2_behavior`) in `sys.modules` before importing the library, so
TensorFlow is not needed. Nothing else of the library is changed.
"""
import json
import os
import subprocess
import sys
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")

LIBRARY_COMMIT = os.environ.get(
    "LO_COMMIT", "32186aa46a96f26ba0625755f93c55659adcd523")


def _stub_tensorflow():
  import glob as _glob
  import shutil
  tf = types.ModuleType("tensorflow")
  gfile = types.SimpleNamespace(
      GFile=open,
      exists=os.path.exists,
      makedirs=lambda p: os.makedirs(p, exist_ok=True),
      copy=lambda a, b, overwrite=True: shutil.copy(a, b),
      rename=lambda a, b, overwrite=True: os.replace(a, b),
      glob=_glob.glob,
      remove=os.remove,
      isdir=os.path.isdir,
      listdir=os.listdir,
  )
  tf.io = types.SimpleNamespace(gfile=gfile)
  tf.enable_v2_behavior = lambda: None
  # `import tensorflow.compat.v2 as tf` (summary.py) gets the same stand-in.
  compat = types.ModuleType("tensorflow.compat")
  compat.v2 = tf
  tf.compat = compat
  tf.__path__ = []  # a package, so that submodule imports resolve
  sys.modules.setdefault("tensorflow", tf)
  sys.modules.setdefault("tensorflow.compat", compat)
  sys.modules.setdefault("tensorflow.compat.v2", tf)


# flax.io looks for TensorFlow itself and falls back to plain files without it: import
# it before the stand-in exists, so that it takes that fallback.
import flax.io  # noqa: E402,F401

_stub_tensorflow()

import flax  # noqa: E402
import haiku  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from learned_optimization.optimizers import gradient_accumulator  # noqa: E402
from learned_optimization.optimizers import learning_rate_schedules as lrs  # noqa: E402
from learned_optimization.optimizers import nadamw  # noqa: E402
from learned_optimization.optimizers import opt_list  # noqa: E402
from learned_optimization.optimizers import optax_opts  # noqa: E402
from learned_optimization.optimizers import optimizer_wrappers  # noqa: E402

STEPS = 50
N = 7
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "reference")


def versions():
  return {
      "jax": jax.__version__,
      "optax": optax.__version__,
      "flax": flax.__version__,
      "dm-haiku": haiku.__version__,
      "numpy": np.__version__,
      "learned_optimization_commit": LIBRARY_COMMIT,
  }


def f32list(x):
  return [float(v) for v in np.asarray(x, np.float32).reshape(-1)]


def fixed_problem():
  """Initial params and per-step gradients, f32, deterministic and varied in scale."""
  i = np.arange(N, dtype=np.float64)
  p0 = (np.sin(1.3 * i + 0.4) * 1.5).astype(np.float32)
  grads = []
  for t in range(STEPS):
    g = np.cos(0.7 * t + 1.1 * i) * (0.05 + 2.0 * (i / N)) + 0.01 * (t % 3 - 1)
    grads.append(g.astype(np.float32))
  losses = [float(np.float32(1.0 + 0.1 * np.sin(t))) for t in range(STEPS)]
  return p0, grads, losses


def run_library(opt, p0, grads, losses, num_steps=STEPS):
  state = opt.init(jnp.asarray(p0), num_steps=num_steps)
  traj = []
  upd = jax.jit(lambda s, g, l: opt.update(s, g, loss=l))
  for g, l in zip(grads, losses):
    state = upd(state, jnp.asarray(g), jnp.asarray(l, jnp.float32))
    traj.append(f32list(opt.get_params(state)))
  return traj


def run_optax(tx, p0, grads):
  p = jnp.asarray(p0)
  s = tx.init(p)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  traj = []
  for g in grads:
    p, s = step(p, s, jnp.asarray(g))
    traj.append(f32list(p))
  return traj


def main():
  p0, grads, losses = fixed_problem()
  cases = []

  def add(name, kind, config, traj):
    cases.append({"name": name, "kind": kind, "config": config, "trajectory": traj})

  # optax.adamw, constant learning rate.
  add("optax_adamw", "adamw",
      {"lr": 0.01, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0,
       "weight_decay": 0.01},
      run_optax(optax.adamw(0.01, weight_decay=0.01), p0, grads))
  # optax.adamw on a warmup-cosine schedule, custom betas.
  sched = optax.warmup_cosine_decay_schedule(0.0, 0.02, 10, 50, 0.001)
  add("optax_adamw_warmup_cosine", "adamw",
      {"lr_schedule": {"type": "warmup_cosine_decay", "init_value": 0.0,
                       "peak_value": 0.02, "warmup_steps": 10,
                       "decay_steps": 50, "end_value": 0.001, "exponent": 1.0},
       "b1": 0.8, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-8,
       "weight_decay": 0.1},
      run_optax(optax.adamw(sched, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8,
                            weight_decay=0.1), p0, grads))

  # The library's NAdamW (constant lr), Nesterov on and off, with both decays.
  for nest in (True, False):
    cfg = dict(learning_rate=0.01, beta1=0.9, beta2=0.99, epsilon=1e-7,
               adamw_weight_decay=0.02, l2_weight_decay=0.003,
               use_nesterov=nest)
    add(f"nadamw_nesterov_{nest}", "nadamw", dict(cfg),
        run_library(nadamw.NAdamW(**cfg), p0, grads, losses))
  # NAdamW with the library's cosine schedule.
  cfg = dict(beta1=0.9, beta2=0.999, epsilon=1e-8, adamw_weight_decay=0.01,
             l2_weight_decay=0.0, use_nesterov=True)
  sch = dict(learning_rate=0.02, min_learning_rate_mult=0.1,
             constant_fraction=0.3, warmup_fraction=0.1)
  add("nadamw_library_cosine", "nadamw",
      dict(cfg, learning_rate={"type": "library_cosine", **sch}),
      run_library(nadamw.NAdamW(
          learning_rate=lrs.CosineLearningRateSchedule(**sch), **cfg),
                  p0, grads, losses))
  # OptList entries (the library's sorted NAdamW hyperparameters).
  for idx in range(4):
    add(f"opt_list_{idx}", "opt_list", {"idx": idx, "num_steps": STEPS},
        run_library(opt_list.OptList(idx), p0, grads, losses))

  # Weight-decay wrapper (the library's) around the library's Adam.
  add("weight_decay_adam", "weight_decay_adam",
      {"weight_decay": 0.05, "lr": 0.01},
      run_library(optimizer_wrappers.WeightDecayWrapper(
          optax_opts.Adam(0.01), weight_decay=0.05), p0, grads, losses))
  # Gradient accumulation: the library's GradientAccumulator and optax.MultiSteps.
  add("grad_accum_library_adam", "grad_accum_adam",
      {"every": 3, "lr": 0.01},
      run_library(gradient_accumulator.GradientAccumulator(
          optax_opts.Adam(0.01), num_average=3), p0, grads, losses))
  add("grad_accum_optax_multisteps_adam", "grad_accum_adam",
      {"every": 3, "lr": 0.01},
      run_optax(optax.MultiSteps(optax.adam(0.01, eps_root=1e-8), 3), p0,
                grads))
  # Around SGD too: Adam's normalization would hide a sum passed for the mean.
  add("grad_accum_library_sgd", "grad_accum_sgd", {"every": 4, "lr": 0.1},
      run_library(gradient_accumulator.GradientAccumulator(
          optax_opts.SGD(0.1), num_average=4), p0, grads, losses))
  add("grad_accum_optax_multisteps_sgd", "grad_accum_sgd",
      {"every": 4, "lr": 0.1},
      run_optax(optax.MultiSteps(optax.sgd(0.1), 4), p0, grads))

  # Schedules: value at steps 0..59.
  steps = np.arange(60)
  schedules = []

  def sadd(config, fn):
    vals = [float(np.float32(fn(jnp.asarray(s)))) for s in steps]
    schedules.append({"config": config, "values": vals})

  sadd({"type": "constant", "value": 0.1}, optax.constant_schedule(0.1))
  sadd({"type": "linear", "init_value": 0.1, "end_value": 0.001,
        "transition_steps": 30, "transition_begin": 5},
       optax.linear_schedule(0.1, 0.001, 30, 5))
  sadd({"type": "cosine_decay", "init_value": 0.1, "decay_steps": 40,
        "alpha": 0.1, "exponent": 1.0},
       optax.cosine_decay_schedule(0.1, 40, alpha=0.1))
  sadd({"type": "cosine_decay", "init_value": 0.1, "decay_steps": 40,
        "alpha": 0.0, "exponent": 2.0},
       optax.cosine_decay_schedule(0.1, 40, alpha=0.0, exponent=2.0))
  sadd({"type": "warmup_cosine_decay", "init_value": 0.0, "peak_value": 0.1,
        "warmup_steps": 10, "decay_steps": 50, "end_value": 0.01,
        "exponent": 1.0},
       optax.warmup_cosine_decay_schedule(0.0, 0.1, 10, 50, 0.01))
  sadd({"type": "exponential_decay", "init_value": 0.1, "transition_steps": 5,
        "decay_rate": 0.5, "transition_begin": 3, "staircase": False,
        "end_value": None},
       optax.exponential_decay(0.1, 5, 0.5, transition_begin=3))
  sadd({"type": "exponential_decay", "init_value": 0.1, "transition_steps": 5,
        "decay_rate": 0.5, "transition_begin": 3, "staircase": True,
        "end_value": 0.005},
       optax.exponential_decay(0.1, 5, 0.5, transition_begin=3,
                               staircase=True, end_value=0.005))
  sadd({"type": "library_exponential", "base_lr": 0.1, "decay_amount": 0.05},
       lrs.ExponentialDecay(0.1, 0.05))
  for sch in (dict(learning_rate=0.1, min_learning_rate_mult=0.1,
                   constant_fraction=0.5, warmup_fraction=0.1),
              dict(learning_rate=0.1, min_learning_rate_mult=0.0,
                   constant_fraction=0.2, warmup_fraction=0.0)):
    f = lrs.CosineLearningRateSchedule(**sch)
    sadd(dict({"type": "library_cosine", "max_steps": 50}, **sch),
         lambda s, f=f: f(s, 50))

  # The first opt_list entries, for the Rust table (checked by the Rust tests).
  with open(os.path.join(os.path.dirname(opt_list.__file__), "data",
                         "opt_list.json")) as fh:
    table = json.load(fh)[:10]

  out = {
      "generated_by": "scripts/make_reference_optimizers.py",
      "versions": versions(),
      "params0": f32list(p0),
      "grads": [f32list(g) for g in grads],
      "losses": losses,
      "cases": cases,
      "schedules": schedules,
      "opt_list_head": table,
  }
  os.makedirs(OUT, exist_ok=True)
  path = os.path.join(OUT, "baselines.json")
  with open(path, "w") as fh:
    json.dump(out, fh, indent=None, separators=(",", ":"))
    fh.write("\n")
  print("wrote", path, versions())


if __name__ == "__main__":
  main()

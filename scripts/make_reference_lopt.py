#!/usr/bin/env python3
"""Reference θ files and trajectories of the JAX library's learned optimizers.

For each learned optimizer: θ from the library's own `init`, saved with the library's own
checkpoint code (`checkpoints.save_state`, i.e. flax msgpack) as
tests/reference/<name>_theta.msgpack; a small parameter tree; and the parameter
trajectory over 50 updates on fixed gradients, in tests/reference/lopt_<name>.json.
Read by tests/lopt_reference.rs.

    PYTHONPATH=/work/lo_src JAX_PLATFORMS=cpu python3 scripts/make_reference_lopt.py
    # only VeLO training a small task in closed loop (lopt_velo*_task.json):
    PYTHONPATH=/work/lo_src JAX_PLATFORMS=cpu python3 scripts/make_reference_lopt.py --velo-task
    # after `LOPT_WRITE_REFERENCE=1 cargo test --test lopt_reference` wrote θ files from Rust:
    PYTHONPATH=/work/lo_src JAX_PLATFORMS=cpu python3 scripts/make_reference_lopt.py --check-lopt-written

The second form loads every tests/reference/*_theta.lopt.msgpack (written by lopt) with
the library's `checkpoints.load_state` against the library's θ structure and checks its
values against those recorded beside it; it exits non-zero on any failure.

Versions for the committed files: recorded in each JSON's "versions" (jax 0.10.2,
optax 0.2.8, dm-haiku 0.0.17, flax 0.12.8) and library commit 32186aa. As in
make_reference_optimizers.py, TensorFlow (imported by the library only for tf.io.gfile)
is replaced by a small stand-in in sys.modules.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import make_reference_optimizers as mro  # noqa: E402  (installs the tf stand-in)

import flax  # noqa: E402
import flax.serialization  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from learned_optimization import checkpoints  # noqa: E402
from learned_optimization.learned_optimizers import adafac_mlp_lopt  # noqa: E402
from learned_optimization.learned_optimizers import base as lopt_base  # noqa: E402
from learned_optimization.learned_optimizers import nn_adam  # noqa: E402
from learned_optimization.learned_optimizers import rnn_mlp_lopt  # noqa: E402
from learned_optimization.research.general_lopt import hyper_v2  # noqa: E402

STEPS = 50
# The learned optimizers whose θ tests/lopt_reference.rs writes (nn_adam_decay shares
# nn_adam's θ layout).
LOPT_WRITTEN = ("learnable_sgdm", "nn_adam", "adafac_mlp_lopt", "rnn_mlp_lopt",
                "velo")
OUT = mro.OUT


def tree_problem(wide=False):
  """A parameter tree {"b": f32[4], "w": f32[3, 4]} (with `wide`, also a scalar "s" and a
  tall matrix "v": f32[5, 2] and a square "q": f32[3, 3], so that both factorings, the
  tie and the scalar path are used) and
  fixed gradients."""
  i = np.arange(12, dtype=np.float64)
  p0 = {"b": (0.1 * np.cos(np.arange(4) + 0.5)).astype(np.float32),
        "w": np.sin(0.9 * i + 0.3).reshape(3, 4).astype(np.float32)}
  if wide:
    p0["s"] = np.asarray(0.7, np.float32)
    p0["v"] = np.cos(1.7 * np.arange(10) + 0.2).reshape(5, 2).astype(np.float32)
    p0["q"] = np.sin(2.1 * np.arange(9) - 0.4).reshape(3, 3).astype(np.float32)
  grads = []
  for t in range(STEPS):
    g = {"w": (np.cos(0.37 * t + 0.8 * i) * (0.2 + 0.1 * (t % 5))).reshape(3, 4),
         "b": np.sin(0.5 * t + np.arange(4)) * 0.05 + 0.01}
    if wide:
      g["s"] = np.asarray(0.3 * np.sin(0.2 * t) + 0.05)
      g["v"] = (np.sin(0.23 * t + 1.3 * np.arange(10)) *
                (1.0 + np.arange(10) / 3)).reshape(5, 2)
      g["q"] = (np.cos(0.41 * t + 0.7 * np.arange(9)) *
                (0.5 + np.arange(9) / 4)).reshape(3, 3)
    grads.append({k: v.astype(np.float32) for k, v in g.items()})
  if wide:
    # Not monotone, with a spike at step 20 that VeLO's loss buffer clips to twice its
    # running maximum.
    losses = [float(np.float32(2.0 - 0.02 * t + 0.3 * np.sin(0.9 * t) +
                               (8.0 if t == 20 else 0.0))) for t in range(STEPS)]
  else:
    losses = [float(np.float32(2.0 - 0.01 * t)) for t in range(STEPS)]
  return p0, grads, losses


def as_json_tree(tree):
  return {k: mro.f32list(v) for k, v in sorted(tree.items())}


def trajectory(lopt, theta, p0, grads, losses):
  """The library's update over the gradients.

  Jitted, except for RNNMLPLOpt: under jit with jax/jaxlib 0.10.2, XLA rewrites
  `_LossNormalizer.corrected_mean`'s `1 / (1 - 0.95**0 + 1e-8)` as `1 / (1 - (1 - 1e-8))`
  (the `+ 1e-8` folded into the subtraction, where it vanishes in f32), so the validation
  loss feature is 0·inf = NaN and every parameter is NaN from the first step. Run op by
  op, the library computes what its code says (1e8·0 = 0); that is the reference."""
  opt = lopt.opt_fn(theta)
  state = opt.init(jax.tree_util.tree_map(jnp.asarray, p0), num_steps=STEPS)
  if isinstance(lopt, rnn_mlp_lopt.RNNMLPLOpt):
    upd = lambda s, g, l: opt.update(s, g, loss=l)  # noqa: E731
  elif isinstance(lopt, hyper_v2.HyperV2):
    # HyperV2 splits a key it does not otherwise use (its MLP has no randomness).
    key = jax.random.PRNGKey(0)
    upd = jax.jit(lambda s, g, l: opt.update(s, g, loss=l, key=key))
  else:
    upd = jax.jit(lambda s, g, l: opt.update(s, g, loss=l))
  traj = []
  for g, l in zip(grads, losses):
    state = upd(state, jax.tree_util.tree_map(jnp.asarray, g),
                jnp.asarray(l, jnp.float32))
    traj.append(as_json_tree(opt.get_params(state)))
  return traj


def flat_theta(theta):
  """θ's arrays by their path in flax's state dict (the file's layout), '/'-joined
  (haiku module names contain '/' themselves; lopt splits on known names)."""
  out = {}

  def walk(prefix, d):
    if isinstance(d, dict):
      for k, v in d.items():
        walk(prefix + [str(k)], v)
    else:
      out["/".join(prefix)] = {"shape": list(np.shape(d)),
                               "values": mro.f32list(d)}

  walk([], flax.serialization.to_state_dict(theta))
  return out


def lopts():
  """name -> (learned optimizer, θ). θ is the library's init; where that init leaves a
  part of the update unused (NNAdam's zero-initialized output layer), θ is the init
  plus a fixed perturbation so that every part of θ shapes the trajectory."""
  out = {}
  sgdm = lopt_base.LearnableSGDM(initial_lr=0.02, initial_momentum=0.8)
  out["learnable_sgdm"] = (sgdm, sgdm.init(jax.random.PRNGKey(0)), {
      "initial_lr": 0.02, "initial_momentum": 0.8})

  cfg = dict(output_scale=0.01, initial_learning_rate=0.01, initial_beta1=0.9,
             initial_beta2=0.99, initial_epsilon=1e-6, decay_strength=0.0,
             lstm_hidden_size=8)

  def perturbed(lopt, bias=None):
    theta = dict(lopt.init(jax.random.PRNGKey(1)))
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(2), 4)
    st = theta["lstm_init_state"]
    theta["lstm_init_state"] = type(st)(
        hidden=st.hidden + 0.1 * jax.random.normal(k1, st.hidden.shape),
        cell=st.cell + 0.1 * jax.random.normal(k2, st.cell.shape))
    ctl = dict(theta["rnn_to_controls_params"]["rnn_to_controls"])
    ctl["w"] = ctl["w"] + 0.3 * jax.random.normal(k3, ctl["w"].shape)
    ctl["b"] = ctl["b"] + 0.1 * jax.random.normal(k4, ctl["b"].shape)
    if bias is not None:
      ctl["b"] = ctl["b"] + jnp.asarray(bias, jnp.float32)
    theta["rnn_to_controls_params"] = {"rnn_to_controls": ctl}
    return flax.core.FrozenDict(theta)

  nna = nn_adam.NNAdam(**cfg)
  out["nn_adam"] = (nna, perturbed(nna), cfg)
  # With decay toward θ's hyperparameters.
  cfg_d = dict(cfg, decay_strength=0.05)
  nnd = nn_adam.NNAdam(**cfg_d)
  out["nn_adam_decay"] = (nnd, perturbed(nnd), cfg_d)
  # At the clip bounds: β1 = 0 and ε = 1e4, pushed further out by the output bias, so
  # that the clips in fwd(inv(x)) act.
  cfg_c = dict(cfg, initial_beta1=0.0, initial_epsilon=1e4)
  nnc = nn_adam.NNAdam(**cfg_c)
  out["nn_adam_clipped"] = (nnc, perturbed(nnc, [0.0, 3.0, 0.0, 3.0]), cfg_c)

  def perturbed_adafac(lopt):
    theta = lopt.init(jax.random.PRNGKey(3))
    keys = iter(jax.random.split(jax.random.PRNGKey(4), 16))
    theta = dict(theta)
    for k in ("momentum_decays", "rms_decays", "adafactor_decays"):
      theta[k] = theta[k] + 0.1 * jax.random.normal(next(keys), theta[k].shape)
    nn = {k: dict(v) for k, v in theta["nn"].items()}
    for mod in nn.values():
      for k in list(mod):
        if k.startswith("b"):
          mod[k] = mod[k] + 0.1 * jax.random.normal(next(keys), mod[k].shape)
    theta["nn"] = nn
    return theta

  cfg = dict(exp_mult=0.001, step_mult=0.001, hidden_size=4, hidden_layers=2)
  ada = adafac_mlp_lopt.AdafacMLPLOpt(**cfg)
  out["adafac_mlp_lopt"] = (ada, perturbed_adafac(ada), cfg)
  cfg = dict(exp_mult=0.3, step_mult=0.02, hidden_size=6, hidden_layers=1)
  ada = adafac_mlp_lopt.AdafacMLPLOpt(**cfg)
  out["adafac_mlp_lopt_big_steps"] = (ada, perturbed_adafac(ada), cfg)

  def perturbed_rnn(lopt):
    theta = lopt.init(jax.random.PRNGKey(5))
    keys = iter(jax.random.split(jax.random.PRNGKey(6), 32))

    def bump(tree):
      if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: (bump(v) if k != "w" else v) for k, v in tree.items()}
      return tree + 0.1 * jax.random.normal(next(keys), tree.shape)

    theta = dict(theta)
    st = theta["lstm_init_state"]
    theta["lstm_init_state"] = type(st)(hidden=bump(st.hidden), cell=bump(st.cell))
    for k in ("ffmod_params", "rnn_params", "rnn_to_ff_params",
              "rnn_to_in_params"):
      theta[k] = bump(theta[k])
    return theta

  small = dict(hidden_size=6, hidden_layer=1, from_mlp_size=3,
               from_lstm_size=4, lstm_to_ff=5, lstm_hidden_size=8)
  cfg = dict(step_multiplier=0.001, magnitude_rate=0.001, **small)
  rnn = rnn_mlp_lopt.RNNMLPLOpt(**cfg)
  out["rnn_mlp_lopt"] = (rnn, perturbed_rnn(rnn), cfg)
  cfg = dict(step_multiplier=0.02, magnitude_rate=0.3,
             **dict(small, hidden_layer=2))
  rnn = rnn_mlp_lopt.RNNMLPLOpt(**cfg)
  out["rnn_mlp_lopt_big_steps"] = (rnn, perturbed_rnn(rnn), cfg)

  def perturbed_velo(lopt):
    theta = lopt.init(jax.random.PRNGKey(7))
    keys = iter(jax.random.split(jax.random.PRNGKey(8), 64))

    def bump(tree):
      if hasattr(tree, "items"):
        return {k: (bump(v) if not k.startswith("w") else v)
                for k, v in tree.items()}
      return tree + 0.1 * jax.random.normal(next(keys), tree.shape)

    theta = dict(theta)
    st = theta["lstm_init_state"]
    theta["lstm_init_state"] = type(st)(hidden=bump(st.hidden), cell=bump(st.cell))
    theta["rnn_params"] = bump(theta["rnn_params"])
    theta["ff_mod_stack"] = bump(theta["ff_mod_stack"])
    return theta

  cfg = dict(lstm_hidden_size=8, param_inits=4)
  velo = hyper_v2.HyperV2(**cfg)
  out["velo"] = (velo, perturbed_velo(velo), cfg)
  cfg = dict(lstm_hidden_size=8, param_inits=4, ff_hidden_layers=1,
             use_bugged_next_lstm_state=True)
  velo = hyper_v2.HyperV2(**cfg)
  out["velo_released_flags"] = (velo, perturbed_velo(velo), cfg)
  # The loss buffer sized for the run (the default and released flag sizes it for 10
  # steps, which makes its decays equal and its features nearly constant).
  cfg = dict(lstm_hidden_size=8, param_inits=4, use_bugged_loss_features=False)
  velo = hyper_v2.HyperV2(**cfg)
  out["velo_loss_features"] = (velo, perturbed_velo(velo), cfg)
  return out


def write():
  for name, (lopt, theta, cfg) in lopts().items():
    p0, grads, losses = tree_problem(wide=name.startswith(("adafac", "rnn", "velo")))
    theta_path = os.path.join(OUT, f"{name}_theta.msgpack")
    checkpoints.save_state(theta_path, theta)
    ref = {
        "generated_by": "scripts/make_reference_lopt.py",
        "versions": mro.versions(),
        "name": name,
        "config": cfg,
        "theta_file": os.path.basename(theta_path),
        "theta": flat_theta(theta),
        "params0": as_json_tree(p0),
        "grads": [as_json_tree(g) for g in grads],
        "losses": losses,
        "trajectory": trajectory(lopt, theta, p0, grads, losses),
    }
    path = os.path.join(OUT, f"lopt_{name}.json")
    with open(path, "w") as fh:
      json.dump(ref, fh, separators=(",", ":"))
      fh.write("\n")
    print("wrote", path, theta_path)


def task_problem():
  """A small closed-loop task for VeLO: least squares `mean((X·w + b − Y)²)` on fixed
  X: f32[8, 3], Y: f32[8, 4], from the narrow tree's p0. Its gradients come from the
  parameters VeLO produced, so the update's loss features see a real descent."""
  x = np.sin(0.7 * np.arange(24) + 0.1).reshape(8, 3).astype(np.float32)
  y = np.cos(1.1 * np.arange(32) - 0.2).reshape(8, 4).astype(np.float32)

  def loss(p):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

  return x, y, loss


def write_task():
  """VeLO (θ of lopt_velo / lopt_velo_released_flags, loaded from their msgpack files)
  trains `task_problem` for 50 steps: tests/reference/lopt_<name>_task.json holds the
  data, p0, the library's loss at each step and its parameter trajectory."""
  x, y, loss = task_problem()
  vg = jax.jit(jax.value_and_grad(loss))
  all_lopts = lopts()
  for name in ("velo", "velo_released_flags"):
    lopt, theta, cfg = all_lopts[name]
    theta = checkpoints.load_state(os.path.join(OUT, f"{name}_theta.msgpack"), theta)
    p0, _, _ = tree_problem(wide=False)
    opt = lopt.opt_fn(theta)
    key = jax.random.PRNGKey(0)
    upd = jax.jit(lambda s, g, l: opt.update(s, g, loss=l, key=key))
    state = opt.init(jax.tree_util.tree_map(jnp.asarray, p0), num_steps=STEPS)
    losses, traj = [], []
    for _ in range(STEPS):
      l, g = vg(opt.get_params(state))
      losses.append(float(l))
      state = upd(state, g, l)
      traj.append(as_json_tree(opt.get_params(state)))
    ref = {
        "generated_by": "scripts/make_reference_lopt.py --velo-task",
        "versions": mro.versions(),
        "name": f"{name}_task",
        "config": cfg,
        "theta_file": f"{name}_theta.msgpack",
        "x": mro.f32list(x),
        "y": mro.f32list(y),
        "params0": as_json_tree(p0),
        "losses": losses,
        "trajectory": traj,
    }
    path = os.path.join(OUT, f"lopt_{name}_task.json")
    with open(path, "w") as fh:
      json.dump(ref, fh, separators=(",", ":"))
      fh.write("\n")
    print("wrote", path, "loss", losses[0], "->", losses[-1])


def check_lopt_written():
  """Loads θ files written by lopt with the library's checkpoint code."""
  failures = 0
  for name, (lopt, theta, _) in lopts().items():
    if name not in LOPT_WRITTEN:
      continue
    path = os.path.join(OUT, f"{name}_theta.lopt.msgpack")
    expect_path = os.path.join(OUT, f"{name}_theta.lopt.json")
    if not os.path.exists(path):
      print("MISSING", path)
      failures += 1
      continue
    loaded = checkpoints.load_state(path, theta)
    with open(expect_path) as fh:
      expect = json.load(fh)
    got = flat_theta(loaded)
    for k, v in expect.items():
      ok = (k in got and got[k]["shape"] == v["shape"] and
            got[k]["values"] == [float(np.float32(x)) for x in v["values"]])
      if not ok:
        print("MISMATCH", name, k)
        failures += 1
    if set(got) != set(expect):
      print("KEYS DIFFER", name, sorted(set(got) ^ set(expect)))
      failures += 1
    # The loaded θ must also drive the library's optimizer.
    p0, grads, losses = tree_problem(wide=name.startswith(("adafac", "rnn", "velo")))
    trajectory(lopt, loaded, p0, grads[:2], losses[:2])
    print("loaded", path, "ok" if not failures else "")
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  if "--check-lopt-written" in sys.argv:
    check_lopt_written()
  elif "--velo-task" in sys.argv:
    write_task()
  else:
    write()
    write_task()

"""The JAX side of `cargo bench --bench tasks` and of `pes.conv` in `cargo bench --bench meta`.

Runs the JAX library's own task code (`tasks/fixed/conv.py`: `_ConvTask` over
`_cross_entropy_pool_loss([32, 64, 64], relu)`, and `tasks/parametric/image_conv.py`'s
`ParametricImageConv`) on random batches of the benchmarks' shapes (images ~ U[0,1),
labels ~ U{0..9}, batch 128; the library's datasets are replaced by a stand-in of the
same shapes), and prints one line per case in the Rust harness's format:

    bench <id> median_s=<f> min_s=<f> max_s=<f> n=<int>

Cases (ids as in benches/tasks.rs):
  <id>.grad                 jit(value_and_grad(task.loss)) per call
  <id>.train_100            a jitted optax.adam(1e-3) step called 100 times from Python
                            (the step outside any loop: XLA's fast path), per step
  <id>.train_100.unrolled   100 steps unrolled in one jit, per step (slow to compile)
  <id>.train_100.scan       steps in one jit as lax.scan (10 of them, 2 timed calls: it is
                            slow), per step: how the library's
                            truncated unrolls run; XLA:CPU misses its fast path for the
                            backward convolutions there (jax-ml/jax#12868)
  conv_family.8x8x3.vmap8.train_100   8 ParametricImageConv instances (32, 32
                            channels, strides 2, 1, relu, same batch): a jitted vmapped
                            Adam step called 100 times, per instance-step
  pes.conv                  one outer step of the library's meta-training: MLPLOpt,
                            VectorizedLOptTruncatedStep(8 tasks, constant schedule 200,
                            random_initial_iteration_offset 200), TruncatedPES(trunc 50,
                            steps_per_jit 10, std 0.01), SingleMachineGradientLearner with
                            Adam(1e-3), on the Conv_Cifar10_8_16x32 network with random
                            8x8x3 data in the four splits. Its unrolls run in lax.scan
                            (steps_per_jit 10), XLA's slow path for conv gradients: on a
                            shared 2-core machine the first call took 90 s and 6 more did
                            not finish in 390 s (over 65 s per outer step)

Timing: warm-up (the first call, compile included, is printed separately), then 7
repeats (3 for the unrolled form, 2 for the scan form, which are not warmed up again),
median/min/max; block_until_ready. Run beside the Rust bench on a quiet machine:

    LO_SRC=<checkout with learned_optimization/tasks> python3 scripts/jax/bench_tasks.py [--skip-unrolled] [filter ...]
"""
import argparse
import statistics
import sys
import time

import _lo_import  # noqa: F401  (TensorFlow stand-ins, library on sys.path)

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_optimization.tasks import base as tasks_base
from learned_optimization.tasks.datasets import base as datasets_base
from learned_optimization.tasks.fixed import conv
from learned_optimization.tasks.parametric import image_conv

BATCH = 128
STEPS = 100
SCAN_STEPS = 10
REPEATS = 7


def line(case_id, samples):
  s = sorted(samples)
  print(f"bench {case_id} median_s={statistics.median(s):.9f} min_s={s[0]:.9f} "
        f"max_s={s[-1]:.9f} n={len(s)}", flush=True)


def timed(case_id, fn, per=1.0, repeats=REPEATS, warm=True):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  print(f"first {case_id} {time.perf_counter() - t0:.3f} s (trace + compile + run)",
        flush=True)
  if warm:
    jax.block_until_ready(fn())
  samples = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    samples.append((time.perf_counter() - t0) / per)
  line(case_id, samples)
  return statistics.median(samples)


def random_batches(seed, n, shape):
  rng = np.random.RandomState(seed)
  return [{"image": jnp.asarray(rng.uniform(size=(BATCH,) + shape).astype(np.float32)),
           "label": jnp.asarray(rng.randint(0, 10, size=(BATCH,)).astype(np.int32))}
          for _ in range(n)]


def stand_in_datasets(shape, seed=0, pool=8):
  """The library's Datasets with random batches cycling in each split."""
  def it(s):
    bs = random_batches(seed + s, pool, shape)
    i = 0
    while True:
      yield bs[i % pool]
      i += 1
  abstract = {"image": jax.ShapeDtypeStruct((BATCH,) + shape, jnp.float32),
              "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32)}
  return datasets_base.Datasets(it(0), it(1), it(2), it(3),
                                extra_info={"num_classes": 10},
                                abstract_batch=abstract)


def bench_task(case_id, shape, skip_unrolled, grad_only=False, skip_scan=False):
  task = conv._ConvTask(
      conv._cross_entropy_pool_loss([32, 64, 64], jax.nn.relu, num_classes=10),
      stand_in_datasets(shape))
  params = task.init(jax.random.PRNGKey(0))
  n = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"{case_id}: {n} parameters", flush=True)
  pool = random_batches(1, 8, shape)
  key = jax.random.PRNGKey(1)
  vg = jax.jit(jax.value_and_grad(task.loss))
  timed(f"{case_id}.grad", lambda: vg(params, key, pool[0]))
  if grad_only:
    return

  opt = optax.adam(1e-3)

  def step(p, s, batch):
    loss, g = jax.value_and_grad(task.loss)(p, key, batch)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  jstep = jax.jit(step)

  def train_outside():
    p, s = params, opt.init(params)
    for t in range(STEPS):
      p, s, _ = jstep(p, s, pool[t % 8])
    return p

  timed(f"{case_id}.train_100", train_outside, per=STEPS)

  images = jnp.stack([b["image"] for b in pool])
  labels = jnp.stack([b["label"] for b in pool])

  def scan_train(p):
    def body(carry, t):
      p, s = carry
      b = {"image": images[t % 8], "label": labels[t % 8]}
      p, s, loss = step(p, s, b)
      return (p, s), loss
    (p, _), losses = jax.lax.scan(body, (p, opt.init(p)), jnp.arange(SCAN_STEPS))
    return p, losses

  # The in-loop form is 12-32x slower: 10 steps in the scan, 2 timed calls, per step.
  jscan = jax.jit(scan_train)
  if not skip_scan:
    timed(f"{case_id}.train_100.scan", lambda: jscan(params), per=SCAN_STEPS, repeats=2,
          warm=False)

  if not skip_unrolled:
    def unrolled(p):
      s = opt.init(p)
      for t in range(STEPS):
        p, s, _ = step(p, s, pool[t % 8])
      return p
    junr = jax.jit(unrolled)
    timed(f"{case_id}.train_100.unrolled", lambda: junr(params), per=STEPS, repeats=3,
          warm=False)


def bench_family():
  shape = (8, 8, 3)
  fam = image_conv.ParametricImageConv(stand_in_datasets(shape), 10, [32, 32],
                                       [(3, 3), (3, 3)], [2, 1])
  cfg = fam.sample(jax.random.PRNGKey(0))
  cfg.values["activation"] = {"index": jnp.asarray(0)}  # relu
  task = fam.task_fn(cfg)
  keys = jax.random.split(jax.random.PRNGKey(2), 8)
  params = jax.vmap(task.init)(keys)
  pool = random_batches(3, 8, shape)
  opt = optax.adam(1e-3)

  def step(p, s, b):
    loss, g = jax.value_and_grad(task.loss)(p, None, b)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  # One vmapped step per call, outside any loop (in a lax.scan the first call alone took
  # 429 s here: the backward-convolution slow path, vmapped).
  jstep = jax.jit(jax.vmap(step, in_axes=(0, 0, None)))

  def train():
    p, s = params, jax.vmap(opt.init)(params)
    for t in range(STEPS):
      p, s, _ = jstep(p, s, pool[t % 8])
    return p

  timed("conv_family.8x8x3.vmap8.train_100", train, per=STEPS * 8)


def bench_pes():
  from learned_optimization.learned_optimizers import mlp_lopt
  from learned_optimization.optimizers import base as opt_base
  from learned_optimization.outer_trainers import gradient_learner
  from learned_optimization.outer_trainers import lopt_truncated_step
  from learned_optimization.outer_trainers import truncated_pes
  from learned_optimization.outer_trainers import truncation_schedule

  task = conv._ConvTask(
      conv._cross_entropy_pool_loss([16, 32], jax.nn.relu, num_classes=10),
      stand_in_datasets((8, 8, 3), seed=30, pool=64))
  family = tasks_base.single_task_to_family(task)
  lopt = mlp_lopt.MLPLOpt()
  sched = truncation_schedule.ConstantTruncationSchedule(200)
  step = lopt_truncated_step.VectorizedLOptTruncatedStep(
      family, lopt, sched, num_tasks=8, random_initial_iteration_offset=200)
  est = truncated_pes.TruncatedPES(step, trunc_length=50, steps_per_jit=10, std=0.01)
  learner = gradient_learner.SingleMachineGradientLearner(lopt, [est], opt_base.Adam(1e-3))
  state = [learner.init(jax.random.PRNGKey(0))]
  i = [0]

  def outer():
    i[0] += 1
    state[0], loss, _ = learner.update(state[0], jax.random.PRNGKey(i[0]))
    return loss

  timed("pes.conv", outer, repeats=5)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--skip-unrolled", action="store_true",
                 help="skip the 100-steps-unrolled form (about 80 s of compile each)")
  p.add_argument("--grad-only", action="store_true",
                 help="only the .grad cases of the two fixed tasks")
  p.add_argument("--skip-scan", action="store_true",
                 help="skip the in-loop (lax.scan) form, minutes per task on this machine")
  p.add_argument("filters", nargs="*")
  a = p.parse_args()
  print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
  want = lambda k: not a.filters or any(f in k for f in a.filters)  # noqa: E731
  if want("conv32x64x64.c10_32x32x3"):
    bench_task("conv32x64x64.c10_32x32x3", (32, 32, 3), a.skip_unrolled, a.grad_only,
               a.skip_scan)
  if want("conv32x64x64.fmnist_28x28x1"):
    bench_task("conv32x64x64.fmnist_28x28x1", (28, 28, 1), a.skip_unrolled, a.grad_only,
               a.skip_scan)
  if a.grad_only:
    return 0
  if want("conv_family"):
    bench_family()
  if want("pes.conv"):
    bench_pes()
  return 0


if __name__ == "__main__":
  sys.exit(main())

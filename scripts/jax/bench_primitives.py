"""JAX side of `cargo bench --bench primitives`: the same layers, jit(value_and_grad).

Prints `bench <id> median_s=<f> min_s=<f> max_s=<f> n=<int>` with the ids of the Rust
benchmark (only the `.grad` cases: JAX's `jit(value_and_grad)`):

* `conv.<shape>.grad`: one layer of Conv_Cifar10_32x64x64 (haiku's Conv2D: 3x3, SAME,
  NHWC/HWIO, bias, then ReLU) under `sum(relu(conv(x, w) + b))`, the gradient in w, b,
  and x for the second and third layers (as the Rust case);
* `attn.b64t32h4d32.grad`: haiku MultiHeadAttention's core with the causal mask
  (einsum logits / sqrt(32), where(mask, logits, -1e30), softmax, einsum, reshape)
  under `vdot(attention(qkv), r)`, gradient in qkv;
* `embed.v256d128n2048.grad`: `vdot(table[ids], r)`, gradient in the table;
* `lstm.b128t32e64h128.grad`: an LSTM layer over 32 steps (`lax.scan`, as haiku's
  `dynamic_unroll` runs `hk.LSTM`; gates `[i f g o]` of `x Wx + h Wh + b`) of a batch of
  128, 64 inputs, 128 hidden, under `sum_t vdot(h_t, r_t)`, gradient in Wx, Wh, b.

Cases are interleaved: warm-up, then 7 rounds in which every case takes one sample of
calls lasting about 0.3 s. Usage: `python3 scripts/jax/bench_primitives.py [substring...]`.
With `LOPT_BENCH_CLOCK=cpu` (as for the Rust side) the samples are the CPU seconds of all
the process's threads (`time.process_time`) instead of wall time.
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def conv_case(n, hw, cin, cout, stride, with_dx, rng):
  x = jnp.asarray(rng.standard_normal((n, hw, hw, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin),
                  jnp.float32)
  b = jnp.full((cout,), 0.01, jnp.float32)

  def loss(w, b, x):
    y = jax.lax.conv_general_dilated(
        x, w, (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.relu(y + b))

  argnums = (0, 1, 2) if with_dx else (0, 1)
  f = jax.jit(jax.value_and_grad(loss, argnums=argnums))
  return f, (w, b, x)


def attention_case(rng, batch=64, time_=32, heads=4, d=32):
  qkv = jnp.asarray(rng.standard_normal((batch, time_, 3 * heads * d)),
                    jnp.float32)
  r = jnp.asarray(rng.standard_normal((batch, time_, heads * d)), jnp.float32)
  mask = jnp.tril(jnp.ones((time_, time_), bool))[None, None]

  def attn(qkv):
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q = q.reshape(batch, time_, heads, d)
    k = k.reshape(batch, time_, heads, d)
    v = v.reshape(batch, time_, heads, d)
    logits = jnp.einsum("...thd,...Thd->...htT", q, k)
    logits = logits / np.sqrt(d).astype(k.dtype)
    logits = jnp.where(mask, logits, -1e30)
    weights = jax.nn.softmax(logits)
    out = jnp.einsum("...htT,...Thd->...thd", weights, v)
    return out.reshape(batch, time_, heads * d)

  f = jax.jit(jax.value_and_grad(lambda qkv, r: jnp.vdot(attn(qkv), r)))
  return f, (qkv, r)


def embed_case(rng):
  table = jnp.asarray(rng.standard_normal((256, 128)), jnp.float32)
  ids = jnp.asarray((np.arange(64 * 32) * 37 + 11) % 256, jnp.int32)
  r = jnp.asarray(rng.standard_normal((64 * 32, 128)), jnp.float32)
  f = jax.jit(jax.value_and_grad(lambda t, ids, r: jnp.vdot(t[ids], r)))
  return f, (table, ids, r)


def lstm_case(rng, batch=128, steps=32, e=64, h=128):
  wx = jnp.asarray(rng.standard_normal((e, 4 * h)) / np.sqrt(e), jnp.float32)
  wh = jnp.asarray(rng.standard_normal((h, 4 * h)) / np.sqrt(h), jnp.float32)
  b = jnp.zeros((4 * h,), jnp.float32)
  xs = jnp.asarray(rng.standard_normal((steps, batch, e)), jnp.float32)
  rs = jnp.asarray(rng.standard_normal((steps, batch, h)), jnp.float32)

  def loss(wx, wh, b, xs, rs):
    def step(carry, xr):
      hh, c = carry
      x, r = xr
      z = x @ wx + hh @ wh + b
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      hh = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (hh, c), jnp.vdot(hh, r)

    zero = jnp.zeros((batch, h), jnp.float32)
    _, ls = jax.lax.scan(step, (zero, zero), (xs, rs))
    return jnp.sum(ls)

  f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return f, (wx, wh, b, xs, rs)


def main():
  filters = [a for a in sys.argv[1:] if not a.startswith("--")]
  rng = np.random.default_rng(7)
  cases = []
  for tag, hw, c in (("c10", 32, 3), ("fm", 28, 1)):
    o = hw // 2
    cases.append((f"conv.{tag}1.n128h{hw}w{hw}c{c}o32s2.grad",
                  conv_case(128, hw, c, 32, 2, False, rng)))
    cases.append((f"conv.{tag}2.n128h{o}w{o}c32o64s1.grad",
                  conv_case(128, o, 32, 64, 1, True, rng)))
    cases.append((f"conv.{tag}3.n128h{o}w{o}c64o64s1.grad",
                  conv_case(128, o, 64, 64, 1, True, rng)))
  cases.append(("attn.b64t32h4d32.grad", attention_case(rng)))
  cases.append(("embed.v256d128n2048.grad", embed_case(rng)))
  cases.append(("lstm.b128t32e64h128.grad", lstm_case(rng)))
  cases = [c for c in cases if not filters or any(f in c[0] for f in filters)]
  print("jax", jax.__version__, jax.devices())

  reps = {}
  for cid, (f, args) in cases:
    jax.block_until_ready(f(*args))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    one = max(time.perf_counter() - t0, 1e-9)
    reps[cid] = max(1, int(np.ceil(0.3 / one)))
  samples = {cid: [] for cid, _ in cases}
  # LOPT_BENCH_CLOCK=cpu: CPU seconds of all the process's threads (as the Rust side).
  clock = (time.process_time if os.environ.get("LOPT_BENCH_CLOCK") == "cpu"
           else time.perf_counter)
  for _ in range(7):
    for cid, (f, args) in cases:
      t0 = clock()
      for _ in range(reps[cid]):
        out = f(*args)
      jax.block_until_ready(out)
      samples[cid].append((clock() - t0) / reps[cid])
  for cid, _ in cases:
    s = samples[cid]
    print(f"bench {cid} median_s={statistics.median(s):.9f} "
          f"min_s={min(s):.9f} max_s={max(s):.9f} n={len(s)}")


if __name__ == "__main__":
  main()

"""Parameter counts and f64 loss values of the JAX library's conv and autoencoder tasks.

Prints what tests/conv_tasks.rs compares with: haiku's parameter count of
`conv._cross_entropy_pool_loss(hidden, relu)` on each input shape and of
`image_mlp_ae._fc_ae_loss_fn([128, 32, 128], relu)` on 28x28x1, and the loss (with
`jax_enable_x64`) on a deterministic batch (pixel k = 0.5 + 0.5 sin(0.37 k + 0.1) rounded to f32, labels
[3, 7]) with every parameter leaf 0.3 sin(1.7 k + 2*layer + (0 for w, 1 for b)), k the
row-major index in haiku's shape and layers in haiku's (sorted) module order.

    LO_SRC=<checkout with learned_optimization/tasks> python3 scripts/jax/conv_reference_values.py
"""
import _lo_import  # noqa: F401  (TensorFlow stand-ins, library on sys.path)

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from learned_optimization.tasks.fixed import conv  # noqa: E402
from learned_optimization.tasks.fixed import image_mlp_ae  # noqa: E402


def count(p):
  return sum(x.size for x in jax.tree_util.tree_leaves(p))


def det(p):
  out = {}
  for li, (mod, d) in enumerate(sorted(p.items())):
    out[mod] = {}
    for lj, (k, v) in enumerate(sorted(d.items(), key=lambda kv: kv[0] == "b")):
      idx = np.arange(v.size)
      out[mod][k] = jnp.asarray(
          (0.3 * np.sin(1.7 * idx + 2 * li + lj)).reshape(v.shape), jnp.float64)
  return out


def sine_batch(shape, labels=(3, 7)):
  n = len(labels) * int(np.prod(shape))
  img = (0.5 + 0.5 * np.sin(0.37 * np.arange(n) + 0.1)).reshape((len(labels),) + shape)
  img = img.astype(np.float32).astype(np.float64)  # lopt's image batches hold f32
  return {"image": jnp.asarray(img), "label": jnp.asarray(labels)}


def main():
  for hidden, shape in [([16, 32], (8, 8, 3)), ([32, 64, 64], (16, 16, 3)),
                        ([32, 64, 64], (32, 32, 3)), ([32, 64, 64], (28, 28, 1)),
                        ([16, 32], (8, 8, 1)), ([32, 64, 64], (16, 16, 1)),
                        ([4, 6, 5], (7, 6, 2))]:
    f = hk.transform_with_state(
        conv._cross_entropy_pool_loss(hidden, jax.nn.relu, num_classes=10))
    b = sine_batch(shape)
    p, s = f.init(jax.random.PRNGKey(0), b)
    loss = float(f.apply(det(p), s, None, b)[0])
    print(f"conv {hidden} on {shape}: params {count(p)}, loss {loss!r}")
  f = hk.transform(image_mlp_ae._fc_ae_loss_fn([128, 32, 128], jax.nn.relu))
  b = sine_batch((28, 28, 1))
  p = f.init(jax.random.PRNGKey(0), b)
  print(f"autoencoder 128x32x128 on 28x28x1: params {count(p)}, "
        f"loss {float(f.apply(det(p), None, b))!r}")


if __name__ == "__main__":
  main()

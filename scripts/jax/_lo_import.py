"""Import the JAX library's task code without TensorFlow.

The library's `filesystem`, `summary` and `tasks/datasets/base.py` import TensorFlow and
tensorflow_datasets (for `tf.io.gfile`, summaries and tfds loading, none of which the
benchmarks use: they feed random batches of the tasks' shapes). This module installs
tiny stand-ins in `sys.modules` before the library is imported, and puts the library's
source on `sys.path` (`$LO_SRC`, default /work/lo_src; it must hold
`learned_optimization/tasks/`). Nothing of the library itself is changed.
"""
import os
import sys
import types


def _stub(name, **attrs):
  m = types.ModuleType(name)
  m.__path__ = []
  for k, v in attrs.items():
    setattr(m, k, v)
  sys.modules.setdefault(name, m)
  return m


def install():
  import flax.io  # noqa: F401  (takes its no-TensorFlow fallback before the stub exists)
  gfile = types.SimpleNamespace(GFile=open, exists=os.path.exists,
                                makedirs=lambda p: os.makedirs(p, exist_ok=True),
                                isdir=os.path.isdir, listdir=os.listdir)
  tf = _stub("tensorflow", io=types.SimpleNamespace(gfile=gfile),
             enable_v2_behavior=lambda: None)
  compat = _stub("tensorflow.compat", v2=tf)
  tf.compat = compat
  sys.modules.setdefault("tensorflow.compat.v2", tf)
  _stub("tensorflow_datasets")
  # `tasks/parametric/parametric_utils.py` calls `onp.product`, which numpy 2 removed.
  import numpy
  if not hasattr(numpy, "product"):
    numpy.product = numpy.prod
  src = os.environ.get("LO_SRC", "/work/lo_src")
  if src not in sys.path:
    sys.path.insert(0, src)


install()

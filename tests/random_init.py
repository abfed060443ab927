"""Random weights for the tests' tiny models, cheap to compile.

On CPU, `jax.jit(model.init)` with the default threefry key spends most of its time compiling
the threefry bit generator inlined once per parameter (~30-50 s for a 2-block VMamba on 2 busy
cores, longer than the model's forward). The 'rbg' implementation draws bits with XLA's
RngBitGenerator and compiles in a fraction of that; the initialisers and their distributions
are unchanged, only the stream of bits differs. Tests whose tolerances were set on particular
weights (the multi-device / multi-process Gen comparisons: their images differ by rounding that
depends on the weights) keep their threefry keys.
"""
import jax
import numpy as np


def init_params(model, example, seed: int = 0):
  """model.init's params for an example input, with an 'rbg' key (see the module doc)."""
  return jax.jit(model.init)(jax.random.key(seed, impl='rbg'), example)['params']


def normal(seed: int, shape) -> np.ndarray:
  """Standard-normal test inputs from numpy (no jitted sampler to compile)."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

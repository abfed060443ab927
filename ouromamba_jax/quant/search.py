"""Clipping-range search for static scales (the official lp(2.4) grid search).

Symmetric: candidates m_j = R * j / n (j = 1..n, R = max|x| over the pooled axes), step
s_j = max(m_j / qmax, 1e-8), error mean |x - clip(round(x / s_j), ±qmax) * s_j|^lp. The first
minimum wins (a later candidate must be strictly better). 'minmax' takes j = n (plain RTN).

Asymmetric (Δ): the range [lo, hi] = [min(min x, 0), max(max x, 0)] shrinks towards 0,
[lo, hi] * j / n; s_j = max((hi_j - lo_j) / qmax, 1e-8), z_j = round(-lo_j / s_j), q in
[0, qmax]. Keeping 0 inside the range makes 0 exactly representable (z is an integer code), so
zeroed outlier entries stay 0 after quantization.

The official activation search differs slightly (candidates R * (1 - j/100), which drops R and
adds 0; it shrinks asymmetric ranges from both ends); we use the weight grid everywhere.
The candidates are visited with a `lax.scan`, so memory stays at one copy of x.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from kernels_pallas.act_quant.config import MIN_SCALE


def _lp_error(x, deq, lp, reduce_axes):
  return jnp.mean(_power(jnp.abs(x - deq), lp), axis=reduce_axes, keepdims=True)


def _power(a, lp: float):
  """a ** lp for a >= 0, as exp(lp log a) (0 at a = 0): XLA's CPU `pow` calls the scalar libm
  powf per element (3.1 ns against 0.7 for exp and log, 10 M floats, 2-core CPU), and this
  search, 100 passes with one power per element, was 80 % of a compiled calibration of the
  24-block testbed on the CPU (7.7 of 9.4 s, session 34). An integer lp stays exact."""
  if float(lp).is_integer():
    return jax.lax.integer_pow(a, int(lp))
  return jnp.exp(lp * jnp.log(a))


def _first_minimum(loss_fn, n_grid, shape):
  """Scans j = 1..n_grid; returns the first j whose loss is minimal (shape `shape`)."""
  def step(carry, j):
    best_loss, best_j = carry
    loss = loss_fn(j)
    better = loss < best_loss
    return (jnp.where(better, loss, best_loss), jnp.where(better, j, best_j)), None

  init = (jnp.full(shape, jnp.inf, jnp.float32), jnp.full(shape, n_grid, jnp.int32))
  (_, best_j), _ = jax.lax.scan(step, init, jnp.arange(1, n_grid + 1, dtype=jnp.int32))
  return best_j


def symmetric_candidate(r, j, n_grid, qmax):
  """Step size of candidate j for range R (same float ops everywhere, so tests can match)."""
  m = r * j.astype(jnp.float32) / n_grid
  return jnp.maximum(m / qmax, MIN_SCALE)


def asymmetric_candidate(lo, hi, j, n_grid, qmax):
  jf = j.astype(jnp.float32)
  lo_j = lo * jf / n_grid
  hi_j = hi * jf / n_grid
  scale = jnp.maximum((hi_j - lo_j) / qmax, MIN_SCALE)
  zero_point = jnp.round(-lo_j / scale)
  return scale, zero_point


def search_symmetric_scale(x, qmax: int, reduce_axes: Sequence[int], *, lp: float = 2.4,
                           n_grid: int = 100, init: str = 'lp'):
  """Per-group step size; groups are the axes not in `reduce_axes` (kept as size-1 dims)."""
  x = jnp.asarray(x, jnp.float32)
  reduce_axes = tuple(a % x.ndim for a in reduce_axes)
  r = jnp.max(jnp.abs(x), axis=reduce_axes, keepdims=True)
  if init == 'minmax':
    return symmetric_candidate(r, jnp.int32(n_grid), n_grid, qmax)

  def loss(j):
    s = symmetric_candidate(r, j, n_grid, qmax)
    deq = jnp.clip(jnp.round(x / s), -qmax, qmax) * s
    return _lp_error(x, deq, lp, reduce_axes)

  best_j = _first_minimum(loss, n_grid, r.shape)
  return symmetric_candidate(r, best_j, n_grid, qmax)


def search_asymmetric_range(x, qmax: int, reduce_axes: Sequence[int], *, lp: float = 2.4,
                            n_grid: int = 100, init: str = 'lp'):
  """Per-group (scale, zero_point) on the unsigned grid [0, qmax]; zero_point is integer-valued."""
  x = jnp.asarray(x, jnp.float32)
  reduce_axes = tuple(a % x.ndim for a in reduce_axes)
  lo = jnp.minimum(jnp.min(x, axis=reduce_axes, keepdims=True), 0.0)
  hi = jnp.maximum(jnp.max(x, axis=reduce_axes, keepdims=True), 0.0)
  if init == 'minmax':
    return asymmetric_candidate(lo, hi, jnp.int32(n_grid), n_grid, qmax)

  def loss(j):
    s, z = asymmetric_candidate(lo, hi, j, n_grid, qmax)
    deq = (jnp.clip(jnp.round(x / s) + z, 0, qmax) - z) * s
    return _lp_error(x, deq, lp, reduce_axes)

  best_j = _first_minimum(loss, n_grid, lo.shape)
  return asymmetric_candidate(lo, hi, best_j, n_grid, qmax)

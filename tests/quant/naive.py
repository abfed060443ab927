"""Naive NumPy transcriptions of the quantizer spec (explicit loops), the tests' oracle.

Written from the spec text in ouromamba_jax/quant/{search,activations,weights}.py docstrings,
not from the JAX code: loops over samples, windows, steps and channels, float32 arithmetic for
the quantization itself (so codes match bit for bit), float64 for mean/std thresholds.
"""
from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def sym_qmax(bits):
  return 2 ** (bits - 1) - 1


def lp_search_symmetric(values, qmax, lp=2.4, n_grid=100, minmax=False):
  """values: 1-D float32 pool. Returns the step s (float32)."""
  values = np.asarray(values, F32)
  r = F32(np.max(np.abs(values)))
  best_j, best = n_grid, math.inf
  for j in ([n_grid] if minmax else range(1, n_grid + 1)):
    s = max(F32(r * F32(j) / F32(n_grid)) / F32(qmax), F32(1e-8))
    s = F32(s)
    deq = np.clip(np.round(values / s), -qmax, qmax).astype(F32) * s
    loss = float(np.mean(np.abs(values.astype(np.float64) - deq) ** lp))
    if loss < best:          # first minimum wins
      best, best_j = loss, j
  return F32(max(F32(r * F32(best_j) / F32(n_grid)) / F32(qmax), F32(1e-8)))


def lp_search_asymmetric(values, qmax, lp=2.4, n_grid=100, minmax=False):
  values = np.asarray(values, F32)
  lo = F32(min(np.min(values), 0.0))
  hi = F32(max(np.max(values), 0.0))

  def cand(j):
    lo_j = F32(lo * F32(j) / F32(n_grid))
    hi_j = F32(hi * F32(j) / F32(n_grid))
    s = F32(max(F32(hi_j - lo_j) / F32(qmax), F32(1e-8)))
    return s, F32(np.round(-lo_j / s))

  best_j, best = n_grid, math.inf
  for j in ([n_grid] if minmax else range(1, n_grid + 1)):
    s, z = cand(j)
    deq = (np.clip(np.round(values / s) + z, 0, qmax) - z).astype(F32) * s
    loss = float(np.mean(np.abs(values.astype(np.float64) - deq) ** lp))
    if loss < best:
      best, best_j = loss, j
  return cand(best_j)


def threshold(abs_row, k, ddof):
  a = np.asarray(abs_row, np.float64)
  n = len(a)
  mu = sum(a) / n
  var = sum((v - mu) ** 2 for v in a) / (n - ddof)
  return mu + k * math.sqrt(var)


def act_quant(x, scale, *, bits, symmetric=True, outliers='int', outlier_bits=8, k=3.0,
              n_refresh=10, trigger='sample', ddof=1, zero_point=None):
  """Returns (dequantized (B,L,C) float32, outlier mask (B,L,C) bool)."""
  x = np.asarray(x, F32)
  n_b, length, n_c = x.shape
  qmin, qmax = (-sym_qmax(bits), sym_qmax(bits)) if symmetric else (0, 2 ** bits - 1)
  oqmin, oqmax = ((-sym_qmax(outlier_bits), sym_qmax(outlier_bits)) if symmetric
                  else (0, 2 ** outlier_bits - 1))
  steps = min(n_refresh, length)
  windows = -(-length // steps)
  mask = np.zeros((n_b, length, n_c), bool)
  current = np.zeros((n_b, windows, n_c), bool)      # the outlier set O per (sample, window)
  for i in range(steps):                              # offset inside the window
    fired = np.zeros((n_b, windows), bool)
    for g in range(windows):
      t = g * steps + i
      if t >= length:
        continue
      for b in range(n_b):
        x_in = [0.0 if current[b, g, c] else x[b, t, c] for c in range(n_c)]
        if symmetric:
          s_d = F32(max(abs(v) for v in x_in)) / F32(qmax)
        else:
          s_d = F32(F32(max(x_in)) - F32(min(x_in))) / F32(qmax)
        fired[b, g] = s_d > scale[t]
    if trigger == 'batch':
      fired = np.repeat(fired.any(axis=0, keepdims=True), n_b, axis=0)
    elif trigger == 'official':
      fired = np.full_like(fired, fired.any())
    for g in range(windows):
      t = g * steps + i
      if t >= length:
        continue
      for b in range(n_b):
        if outliers != 'none' and fired[b, g]:
          abs_in = [0.0 if current[b, g, c] else abs(float(x[b, t, c])) for c in range(n_c)]
          thr = threshold(abs_in, k, ddof)
          for c in range(n_c):
            if abs_in[c] > thr:
              current[b, g, c] = True
        mask[b, t] = current[b, g]

  y = np.zeros_like(x)
  for b in range(n_b):
    for t in range(length):
      s = F32(scale[t])
      x_out = np.where(mask[b, t], x[b, t], F32(0))
      if outliers == 'int':
        if symmetric:
          so = F32(max(F32(np.max(np.abs(x_out))), F32(1e-8)) / F32(oqmax))
          zo = F32(0)
        else:
          lo, hi = F32(min(np.min(x_out), 0)), F32(max(np.max(x_out), 0))
          so = F32(max(F32(hi - lo), F32(1e-8)) / F32(oqmax))
          zo = F32(np.round(-lo / so))
      for c in range(n_c):
        v = x[b, t, c]
        if mask[b, t, c]:
          if outliers == 'float':
            y[b, t, c] = v
          else:
            q = np.clip(np.round(v / so) + zo, oqmin, oqmax)
            y[b, t, c] = F32(q - zo) * so
        else:
          z = F32(0) if symmetric else F32(zero_point[t])
          q = np.clip(np.round(v / s) + z, qmin, qmax)
          y[b, t, c] = F32(q - z) * s
  return y, mask


def static_mask(x, k=3.0, n_refresh=10, ddof=1):
  """Calibration extraction: per-step flags, cumulative OR inside each window."""
  x = np.asarray(x, F32)
  n_b, length, n_c = x.shape
  steps = min(n_refresh, length)
  mask = np.zeros(x.shape, bool)
  for b in range(n_b):
    seen = np.zeros(n_c, bool)
    for t in range(length):
      if t % steps == 0:
        seen[:] = False
      thr = threshold(np.abs(x[b, t]), k, ddof)
      for c in range(n_c):
        if abs(float(x[b, t, c])) > thr:
          seen[c] = True
      mask[b, t] = seen
  return mask


def moving_outliers(seed=0, shape=(3, 23, 24)):
  """Gaussian activations with outlier channels that move over time and differ per sample."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  b, length, c = shape
  for t in range(length):
    x[:, t, (t // 4) % c] *= 9.0           # a channel that drifts every 4 steps
  x[0, 2, 5] = 25.0                         # one-off spikes (mu + k sigma over C channels can
                                            # exceed k only if (C - 1) / sqrt(C) > k)
  x[1, 13, 1] = -30.0
  return x

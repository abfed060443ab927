"""XLA twin of the activation-quantization kernel: the canonical integer quantizer itself.

OuroMamba-Quant, for an activation x of shape (B, L, C) (token t = time step):

  O := {} at t = 0, n_refresh, 2 n_refresh, ...            (per sample: the outlier set)
  at each step t:
    x_in   = x_t with the channels in O zeroed
    S_D(t) = max_c |x_in| / qmax        (asymmetric: (max_c x_in - min_c x_in) / qmax)
    if S_D(t) > S_I(t):                  (trigger: per sample, or batch-global, see params)
      mu, sigma = mean, std over channels of |x_in|  (zeros of earlier outliers included, and
                                                      std unbiased by default, as officially)
      O := O ∪ {c : |x_t,c| > mu + k sigma}
    inliers  -> static step S_I(t) on the narrow grid ±qmax (or [0, 2^b - 1] with zero point)
    outliers -> dynamic per-token step max_c |x_t ⊙ O| / o_qmax at outlier_bits, or kept float

The recurrence only carries O, so `detect_outliers` is a `lax.scan` over the n_refresh steps
of a window with all windows (and samples) in parallel; quantization given the mask is then
elementwise (`quantize_parts`). The Pallas kernel reproduces `act_quant_xla` code for code.
A fake-quant caller (the quantization library's STE form) runs this same
`quantize_parts` with straight-through rounding and clipping, so
fake-quant(x) == dequantize(act_quant_xla(x)) bit for bit.

Decisions (the paper is silent; official behaviour kept unless noted):
- sigma is the std with ddof `std_ddof` (1: unbiased, torch.std) over *all* channels of |x_in|,
  already-zeroed outliers included, computed from the sums of |x| and |x|^2 (`threshold`). A single spike among C channels has z-score at most
  (C - 1) / sqrt(C), so k = 3 can only fire for C >= 11 and k = 4 (Δ) for C >= 18.
- Comparisons are strict (S_D > S_I, |x| > threshold). Padded steps of the last window never
  trigger. Step sizes are floored at MIN_SCALE = 1e-8 (a learned step may cross 0).
- Asymmetric grids (Δ): S_D is the inlier range / qmax; outliers use a dynamic per-token range
  over x ⊙ O *including* its zeros (as the official code quantizes x * mask), so 0 is exact.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.act_quant.config import MIN_SCALE, ActQuantParams


class IntActivation(NamedTuple):
  """Integer form of a quantized activation (the act_quant op's output).

  x ≈ (inlier_q - inlier_zero_point[t]) * inlier_scale[t]
      + (outlier_q - outlier_zero_point[b, t]) * outlier_scale[b, t]

  inlier_q:   (B, L, C) int8 (int32 if the grid exceeds a byte); at outlier channels it holds
              the code of 0 (0, or the zero point), so the inlier term vanishes there.
              One code per byte, int4 ones too (no packed form: nothing reads one).
  outlier_q:  (B, L, C) int8 codes at outlier channels and the code of 0 elsewhere
              (outliers='int'); the raw float values (outliers='float'); zeros ('none').
  outlier_scale: (B, L) float32 dynamic per-token step (ones unless outliers='int').
  outlier_mask:  (B, L, C) bool (None where the kernel was asked not to write it).
  Zero points are None for symmetric grids, else int32 arrays.
  """
  inlier_q: jax.Array
  inlier_scale: jax.Array
  inlier_zero_point: Optional[jax.Array]
  outlier_q: jax.Array
  outlier_scale: jax.Array
  outlier_zero_point: Optional[jax.Array]
  outlier_mask: jax.Array


def int_dtype(qmin: int, qmax: int):
  """int8 when the grid fits in a signed byte, else int32."""
  return jnp.int8 if qmin >= -128 and qmax <= 127 else jnp.int32


def check_scale(inlier_scale, length):
  """The static steps are per time step: a scale of another length means another image size."""
  if inlier_scale.ndim != 1 or inlier_scale.shape[0] != length:
    raise ValueError(
        f'activation quantizer: the inlier scale has shape {inlier_scale.shape} but the input has '
        f'{length} time steps; the static scales are per step, so recalibrate for this sequence '
        'length (image size / patch size).')


def windows(length: int, n_refresh: int) -> tuple[int, int]:
  """(n_windows, steps per window); a sequence shorter than one window is one short window."""
  if length <= n_refresh:
    return 1, length
  return -(-length // n_refresh), n_refresh


def to_windows(x, n_windows, n_steps, fill):
  """(B, L, ...) -> (n_steps, B, n_windows, ...), padding L with `fill`."""
  pad = n_windows * n_steps - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
  x = x.reshape((x.shape[0], n_windows, n_steps) + x.shape[2:])
  return jnp.moveaxis(x, 2, 0)


def from_windows(y, length):
  """(n_steps, B, n_windows, ...) -> (B, L, ...)."""
  y = jnp.moveaxis(y, 0, 2)
  y = y.reshape((y.shape[0], y.shape[1] * y.shape[2]) + y.shape[3:])
  return y[:, :length]


def reciprocal_f32(v) -> np.float32:
  """1/v rounded once to fp32 (the constant the kernel multiplies by, so both round alike)."""
  return np.float32(1.0) / np.float32(v)


def threshold(abs_x, params: ActQuantParams):
  """mu + k sigma of |x| over channels (last axis), keepdims.

  sigma comes from the sums of |x| and |x|^2 (one pass), not from the centred values: the
  kernel then needs one round of reductions per time step instead of two, and the two forms
  differ only by fp32 rounding (|x| >= 0, so sum |x|^2 is at most a few times the centred sum
  for activation rows; the result is clamped at 0)."""
  channels = abs_x.shape[-1]
  s1 = jnp.sum(abs_x, axis=-1, keepdims=True)
  s2 = jnp.sum(abs_x * abs_x, axis=-1, keepdims=True)
  mu = s1 * reciprocal_f32(channels)
  var = jnp.maximum((s2 - s1 * mu) * reciprocal_f32(max(channels - params.std_ddof, 1)), 0.0)
  return mu + params.k * jnp.sqrt(var)


def _dynamic_step(x_in, params: ActQuantParams):
  """S_D: the step the current inliers would need (max|x| / qmax, or range / qmax)."""
  if params.symmetric:
    return jnp.max(jnp.abs(x_in), axis=-1) / params.qmax
  return (jnp.max(x_in, axis=-1) - jnp.min(x_in, axis=-1)) / params.qmax


def detect_outliers(x, inlier_scale, params: ActQuantParams):
  """The outlier mask (B, L, C) bool of the run-time recurrence (no gradient).

  x: (B, L, C); inlier_scale: (L,). All-False when params.outliers == 'none'.
  """
  batch, length, channels = x.shape
  check_scale(inlier_scale, length)
  if params.outliers == 'none':
    return jnp.zeros(x.shape, bool)
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  scale = jax.lax.stop_gradient(inlier_scale).astype(jnp.float32)
  n_windows, n_steps = windows(length, params.n_refresh)
  # Padded steps are zeros with step 1: S_D = 0 never exceeds it, so they never trigger.
  xs = to_windows(x, n_windows, n_steps, 0.0)                           # (n, B, G, C)
  ss = to_windows(scale[None, :], n_windows, n_steps, 1.0)[:, 0]        # (n, G)

  def step(mask, inputs):
    x_t, s_t = inputs                                                   # (B, G, C), (G,)
    x_in = jnp.where(mask, 0.0, x_t)
    trigger = _dynamic_step(x_in, params) > s_t[None, :]                # (B, G)
    if params.trigger == 'batch':
      trigger = jnp.broadcast_to(jnp.any(trigger, axis=0, keepdims=True), trigger.shape)
    elif params.trigger == 'official':
      trigger = jnp.broadcast_to(jnp.any(trigger), trigger.shape)
    abs_in = jnp.abs(x_in)
    new = abs_in > threshold(abs_in, params)
    mask = mask | (new & trigger[..., None])
    return mask, mask

  init = jnp.zeros((batch, n_windows, channels), bool)
  _, masks = jax.lax.scan(step, init, (xs, ss))
  return from_windows(masks, length)


def _codes(v, qmin, qmax, zero_point, rnd, clip):
  """clip(round(v) + z, qmin, qmax), written as round(clip(v, qmin - z, qmax - z)) + z.

  Same values (the bounds are integers), but the clip comes before the rounding, so a
  straight-through round (the fake-quant form) has gradient 1 inside the grid and 0 outside.
  """
  lo = jnp.asarray(qmin, jnp.float32)
  hi = jnp.asarray(qmax, jnp.float32)
  if zero_point is None:
    return rnd(clip(v, lo, hi))
  return rnd(clip(v, lo - zero_point, hi - zero_point)) + zero_point


def quantize_parts(x, inlier_scale, params: ActQuantParams, zero_point=None, *,
                   rnd=jnp.round, inlier_clip=jnp.clip, outlier_clip=jnp.clip) -> IntActivation:
  """Quantizes x (B, L, C) given its static step(s); codes stay integer-valued float.

  `rnd` and the clips only choose gradients (the fake-quant form passes straight-through
  versions); their forward values are round-half-to-even and clip, so both forms share every
  float op.
  """
  if not params.symmetric and zero_point is None:
    raise ValueError('an asymmetric quantizer needs a zero point; calibrate it with '
                     '`calibrate_inlier_scale`.')
  x = x.astype(jnp.float32)
  inlier_scale = jnp.maximum(inlier_scale.astype(jnp.float32), MIN_SCALE)
  mask = detect_outliers(x, inlier_scale, params)
  s = inlier_scale[None, :, None]
  x_in = jnp.where(mask, 0.0, x)
  z = None if params.symmetric else jax.lax.stop_gradient(zero_point.astype(jnp.float32))
  inlier_q = _codes(x_in / s, params.qmin, params.qmax, None if z is None else z[None, :, None],
                    rnd, inlier_clip)

  x_out = jnp.where(mask, x, 0.0)
  ones = jnp.ones(x.shape[:2], jnp.float32)
  outlier_z = None
  if params.outliers == 'int':
    # Dynamic per-token step, treated as a constant (gradient flows to x through the STE).
    ref = jax.lax.stop_gradient(x_out)
    if params.symmetric:
      outlier_scale = jnp.maximum(jnp.max(jnp.abs(ref), axis=-1), MIN_SCALE) / params.outlier_qmax
    else:
      lo = jnp.minimum(jnp.min(ref, axis=-1), 0.0)
      hi = jnp.maximum(jnp.max(ref, axis=-1), 0.0)
      outlier_scale = jnp.maximum(hi - lo, MIN_SCALE) / params.outlier_qmax
      outlier_z = jnp.round(-lo / outlier_scale)
    outlier_q = _codes(x_out / outlier_scale[..., None], params.outlier_qmin,
                       params.outlier_qmax, None if outlier_z is None else outlier_z[..., None],
                       rnd, outlier_clip)
  elif params.outliers == 'float':
    outlier_q, outlier_scale = x_out, ones
  else:
    outlier_q, outlier_scale = jnp.zeros_like(x), ones
  return IntActivation(inlier_q, inlier_scale, z, outlier_q, outlier_scale, outlier_z, mask)


def dequantize(q: IntActivation) -> jax.Array:
  """The float activation of an IntActivation, integer or float-coded (cast to float32 first)."""
  f32 = lambda a: None if a is None else a.astype(jnp.float32)
  s = f32(q.inlier_scale)[None, :, None]
  inl = f32(q.inlier_q)
  if q.inlier_zero_point is not None:
    inl = inl - f32(q.inlier_zero_point)[None, :, None]
  out = f32(q.outlier_q)
  if q.outlier_zero_point is not None:
    out = out - f32(q.outlier_zero_point)[..., None]
  return inl * s + out * f32(q.outlier_scale)[..., None]


def act_quant_xla(x, inlier_scale, params: ActQuantParams, zero_point=None) -> IntActivation:
  """The integer form: x (B, L, C), inlier_scale (L,) static steps S_I(t) (+ zero points (L,)
  for an asymmetric grid)."""
  if x.ndim != 3:
    raise ValueError(f'act_quant expects (B, L, C), got shape {x.shape}; reshape per-tensor '
                     'sites to (1, 1, size) first.')
  p = quantize_parts(x, inlier_scale, params, zero_point)
  as_int = lambda a: None if a is None else a.astype(jnp.int32)
  if params.outliers == 'int':
    outlier_q = p.outlier_q.astype(int_dtype(params.outlier_qmin, params.outlier_qmax))
  elif params.outliers == 'float':
    outlier_q = p.outlier_q
  else:
    outlier_q = p.outlier_q.astype(jnp.int8)
  inlier_q = p.inlier_q.astype(int_dtype(params.qmin, params.qmax))
  return IntActivation(inlier_q, p.inlier_scale, as_int(p.inlier_zero_point), outlier_q,
                       p.outlier_scale, as_int(p.outlier_zero_point), p.outlier_mask)

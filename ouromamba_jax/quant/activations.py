"""Activation quantizer with a static per-step inlier scale and dynamic outlier channels.

OuroMamba-Quant, for an activation x of shape (B, L, C) (token t = time step):

  O := {} at t = 0, n_refresh, 2 n_refresh, ...            (per sample: the outlier set)
  at each step t:
    x_in   = x_t with the channels in O zeroed
    S_D(t) = max_c |x_in| / qmax        (asymmetric: (max_c x_in - min_c x_in) / qmax)
    if S_D(t) > S_I(t):                  (trigger: per sample, or batch-global, see ActSpec)
      mu, sigma = mean, std over channels of |x_in|  (zeros of earlier outliers included, and
                                                      std unbiased by default, as officially)
      O := O ∪ {c : |x_t,c| > mu + k sigma}
    inliers  -> static step S_I(t) on the narrow grid ±qmax (or [0, 2^b - 1] with zero point)
    outliers -> dynamic per-token step max_c |x_t ⊙ O| / o_qmax at outlier_bits, or kept float

The recurrence only carries O, so `detect_outliers` is a `lax.scan` over the n_refresh steps
of a window with all windows (and samples) in parallel; quantization given the mask is then
elementwise. The fake-quant form (straight-through rounding, for learning S_I) and the integer
form (`quantize_activation_int`, the reference for the Pallas kernels) share every float op,
so `fake_quantize_activation(x) == dequantize_activation(quantize_activation_int(x))` exactly.

Inputs that are not (B, L, C) (A: (Di, N), D: (Di,)) are treated as a single step holding all
their elements: one static per-tensor scale, same outlier logic.

Decisions (the paper is silent; official behaviour kept unless noted):
- sigma is the unbiased std (ActSpec.std_ddof=1, torch.std) over *all* channels of |x_in|,
  already-zeroed outliers included. A single spike among C channels has z-score at most
  (C - 1) / sqrt(C), so k = 3 can only fire for C >= 11 and k = 4 (Δ) for C >= 18 (Vim-T's
  dt_proj input has C = 12).
- Comparisons are strict (S_D > S_I, |x| > threshold). Padded steps of the last window never
  trigger. Step sizes are floored at 1e-8 (a learned step may cross 0).
- Asymmetric grids (Δ): S_D is the inlier range / qmax; outliers use a dynamic per-token range
  over x ⊙ O *including* its zeros (as the official code quantizes x * mask), so 0 is exact.
- Gradients (fake form): straight-through round; inlier codes clip with gradient 1 on the
  closed grid and 0 outside (LSQ); outlier codes pass the gradient everywhere (their dynamic
  grid is sized to hold them; its step is a constant); the outlier mask has no gradient.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from ouromamba_jax.quant import search
from ouromamba_jax.quant.config import ActSpec

MIN_SCALE = search.MIN_SCALE


@jax.custom_vjp
def round_ste(x):
  """round-half-to-even forward, identity gradient (straight-through estimator)."""
  return jnp.round(x)


def _round_fwd(x):
  return jnp.round(x), None


def _round_bwd(_, g):
  return (g,)


round_ste.defvjp(_round_fwd, _round_bwd)


def int_dtype(qmin: int, qmax: int):
  """int8 when the grid fits in a signed byte, else int32."""
  return jnp.int8 if qmin >= -128 and qmax <= 127 else jnp.int32


def as_steps(x, layout: str = 'auto'):
  """Views x as (B, L, C) steps. Returns (x3, restore).

  layout 'steps': (B, L, C) as is, (B, C) as one step per sample; 'tensor': one step holding
  every element (A, D: a static per-tensor scale); 'auto': 'steps' for 3-D, else 'tensor'.
  """
  if layout == 'auto':
    layout = 'steps' if x.ndim == 3 else 'tensor'
  shape = x.shape
  if layout == 'tensor':
    return x.reshape(1, 1, -1), lambda y: y.reshape(shape)
  if layout != 'steps':
    raise ValueError(f"layout must be 'steps', 'tensor' or 'auto', got {layout!r}")
  if x.ndim == 3:
    return x, lambda y: y
  if x.ndim == 2:
    return x[:, None, :], lambda y: y.reshape(shape)
  raise ValueError(f'a per-step activation quantizer expects (B, L, C) or (B, C), got {shape}.')


def _check_scale(inlier_scale, length):
  if inlier_scale.ndim != 1 or inlier_scale.shape[0] != length:
    raise ValueError(
        f'activation quantizer: the inlier scale has shape {inlier_scale.shape} but the input has '
        f'{length} time steps; the static scales are per step, so recalibrate for this sequence '
        'length (image size / patch size).')


def _windows(length: int, n_refresh: int) -> tuple[int, int]:
  """(n_windows, steps per window); a sequence shorter than one window is one short window."""
  if length <= n_refresh:
    return 1, length
  return -(-length // n_refresh), n_refresh


def _to_windows(x, n_windows, n_steps, fill):
  """(B, L, ...) -> (n_steps, B, n_windows, ...), padding L with `fill`."""
  pad = n_windows * n_steps - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
  x = x.reshape((x.shape[0], n_windows, n_steps) + x.shape[2:])
  return jnp.moveaxis(x, 2, 0)


def _from_windows(y, length):
  """(n_steps, B, n_windows, ...) -> (B, L, ...)."""
  y = jnp.moveaxis(y, 0, 2)
  y = y.reshape((y.shape[0], y.shape[1] * y.shape[2]) + y.shape[3:])
  return y[:, :length]


def _threshold(abs_x, spec: ActSpec):
  """mu + k sigma of |x| over channels (last axis), keepdims."""
  mu = jnp.mean(abs_x, axis=-1, keepdims=True)
  sigma = jnp.std(abs_x, axis=-1, keepdims=True, ddof=spec.std_ddof)
  return mu + spec.k * sigma


def _dynamic_step(x_in, spec: ActSpec):
  """S_D: the step the current inliers would need (max|x| / qmax, or range / qmax)."""
  if spec.symmetric:
    return jnp.max(jnp.abs(x_in), axis=-1) / spec.qmax
  return (jnp.max(x_in, axis=-1) - jnp.min(x_in, axis=-1)) / spec.qmax


def detect_outliers(x, inlier_scale, spec: ActSpec):
  """The outlier mask (B, L, C) bool of the run-time recurrence (no gradient).

  x: (B, L, C); inlier_scale: (L,). All-False when spec.outliers == 'none'.
  """
  batch, length, channels = x.shape
  _check_scale(inlier_scale, length)
  if spec.outliers == 'none':
    return jnp.zeros(x.shape, bool)
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  scale = jax.lax.stop_gradient(inlier_scale).astype(jnp.float32)
  n_windows, n_steps = _windows(length, spec.n_refresh)
  # Padded steps are zeros with step 1: S_D = 0 never exceeds it, so they never trigger.
  xs = _to_windows(x, n_windows, n_steps, 0.0)                          # (n, B, G, C)
  ss = _to_windows(scale[None, :], n_windows, n_steps, 1.0)[:, 0]       # (n, G)

  def step(mask, inputs):
    x_t, s_t = inputs                                                   # (B, G, C), (G,)
    x_in = jnp.where(mask, 0.0, x_t)
    trigger = _dynamic_step(x_in, spec) > s_t[None, :]                  # (B, G)
    if spec.trigger == 'batch':
      trigger = jnp.broadcast_to(jnp.any(trigger, axis=0, keepdims=True), trigger.shape)
    elif spec.trigger == 'official':
      trigger = jnp.broadcast_to(jnp.any(trigger), trigger.shape)
    abs_in = jnp.abs(x_in)
    new = abs_in > _threshold(abs_in, spec)
    mask = mask | (new & trigger[..., None])
    return mask, mask

  init = jnp.zeros((batch, n_windows, channels), bool)
  _, masks = jax.lax.scan(step, init, (xs, ss))
  return _from_windows(masks, length)


def static_outlier_mask(x, spec: ActSpec):
  """Calibration-time extraction (official `extracter_refresh`): flag |x_t| > mu + k sigma at
  every step (no trigger, no scale yet), then OR cumulatively within each refresh window."""
  length = x.shape[1]
  if spec.outliers == 'none':
    return jnp.zeros(x.shape, bool)
  abs_x = jnp.abs(x.astype(jnp.float32))
  flags = abs_x > _threshold(abs_x, spec)
  n_windows, n_steps = _windows(length, spec.n_refresh)
  windows = _to_windows(flags.astype(jnp.int32), n_windows, n_steps, 0)  # (n, B, G, C)
  return _from_windows(jnp.cumsum(windows, axis=0) > 0, length)


def calibrate_inlier_scale(x, spec: ActSpec, layout: str = 'auto'):
  """Static inlier step per time step from calibration activations.

  x: (N, L, C) (or any shape for a per-tensor site). Outliers found by `static_outlier_mask`
  are zeroed, then the lp search runs per step over the pooled (samples, channels).
  Returns (scale (L,), zero_point (L,) integer-valued float, or None when symmetric).
  """
  x3, _ = as_steps(jnp.asarray(x, jnp.float32), layout)
  x_in = jnp.where(static_outlier_mask(x3, spec), 0.0, x3)
  kw = dict(reduce_axes=(0, 2), lp=spec.lp, n_grid=spec.n_grid, init=spec.init)
  if spec.symmetric:
    return search.search_symmetric_scale(x_in, spec.qmax, **kw).reshape(-1), None
  scale, zero_point = search.search_asymmetric_range(x_in, spec.qmax, **kw)
  return scale.reshape(-1), zero_point.reshape(-1)


class QuantizedParts(NamedTuple):
  """Integer-valued float arrays of one quantized activation (what both forms share)."""
  inlier_q: jax.Array                      # (B, L, C)
  inlier_scale: jax.Array                  # (L,)
  inlier_zero_point: Optional[jax.Array]   # (L,) or None (symmetric)
  outlier_q: jax.Array                     # (B, L, C): codes ('int'), raw values ('float'), zeros
  outlier_scale: jax.Array                 # (B, L); ones unless outliers == 'int'
  outlier_zero_point: Optional[jax.Array]  # (B, L) or None
  outlier_mask: jax.Array                  # (B, L, C) bool


class IntActivation(NamedTuple):
  """Integer form of a quantized activation (reference for the Pallas act-quant kernel).

  x ≈ (inlier_q - inlier_zero_point[t]) * inlier_scale[t]
      + (outlier_q - outlier_zero_point[b, t]) * outlier_scale[b, t]

  inlier_q:   (B, L, C) int8 (int32 if the grid exceeds a byte); at outlier channels it holds
              the code of 0 (0, or the zero point), so the inlier term vanishes there.
  outlier_q:  (B, L, C) int8 codes at outlier channels and the code of 0 elsewhere
              (outliers='int'); the raw float values (outliers='float'); zeros ('none').
  outlier_scale: (B, L) float32 dynamic per-token step (ones unless outliers='int').
  outlier_mask:  (B, L, C) bool.
  Zero points are None for symmetric grids, else int32 arrays.
  """
  inlier_q: jax.Array
  inlier_scale: jax.Array
  inlier_zero_point: Optional[jax.Array]
  outlier_q: jax.Array
  outlier_scale: jax.Array
  outlier_zero_point: Optional[jax.Array]
  outlier_mask: jax.Array


def clip_ste(v, lo, hi):
  """clip with gradient 1 on the closed range [lo, hi] and 0 outside (jnp.clip gives 1/2 at
  the bounds, which the largest outlier of a dynamic per-token grid always sits on)."""
  return jnp.where((v >= lo) & (v <= hi), v, jnp.clip(v, lo, hi))


@jax.custom_vjp
def clip_passthrough(v, lo, hi):
  """clip with an identity gradient: for dynamic grids that are sized to hold the values (the
  clip only removes float round-off at the largest value), so every element keeps gradient 1."""
  return jnp.clip(v, lo, hi)


def _clip_passthrough_fwd(v, lo, hi):
  return jnp.clip(v, lo, hi), (lo, hi)


def _clip_passthrough_bwd(res, g):
  lo, hi = res
  return g, jnp.zeros_like(lo), jnp.zeros_like(hi)


clip_passthrough.defvjp(_clip_passthrough_fwd, _clip_passthrough_bwd)


def _codes(v, qmin, qmax, zero_point, rnd, clip=clip_ste):
  """clip(round(v) + z, qmin, qmax), written as round(clip(v, qmin - z, qmax - z)) + z.

  Same values (the bounds are integers), but the clip comes before the straight-through
  round, so the gradient is 1 inside the grid and 0 outside.
  """
  lo = jnp.asarray(qmin, jnp.float32)
  hi = jnp.asarray(qmax, jnp.float32)
  if zero_point is None:
    return rnd(clip(v, lo, hi))
  return rnd(clip(v, lo - zero_point, hi - zero_point)) + zero_point


def quantize_parts(x, inlier_scale, spec: ActSpec, zero_point=None, *, ste: bool = True,
                   mask=None) -> QuantizedParts:
  """Quantizes x (B, L, C) given its static step(s); codes stay float (STE-rounded if `ste`)."""
  if not spec.symmetric and zero_point is None:
    raise ValueError('an asymmetric ActSpec needs a zero point; calibrate it with '
                     '`calibrate_inlier_scale`.')
  rnd = round_ste if ste else jnp.round
  x = x.astype(jnp.float32)
  inlier_scale = jnp.maximum(inlier_scale.astype(jnp.float32), MIN_SCALE)  # learned steps may cross 0
  if mask is None:
    mask = detect_outliers(x, inlier_scale, spec)
  s = inlier_scale.astype(jnp.float32)[None, :, None]
  x_in = jnp.where(mask, 0.0, x)
  if spec.symmetric:
    z = None
    inlier_q = _codes(x_in / s, spec.qmin, spec.qmax, None, rnd)
  else:
    z = jax.lax.stop_gradient(zero_point.astype(jnp.float32))
    inlier_q = _codes(x_in / s, spec.qmin, spec.qmax, z[None, :, None], rnd)

  x_out = jnp.where(mask, x, 0.0)
  ones = jnp.ones(x.shape[:2], jnp.float32)
  outlier_z = None
  if spec.outliers == 'int':
    # Dynamic per-token step, treated as a constant (gradient flows to x through the STE).
    ref = jax.lax.stop_gradient(x_out)
    if spec.symmetric:
      outlier_scale = jnp.maximum(jnp.max(jnp.abs(ref), axis=-1), MIN_SCALE) / spec.outlier_qmax
      outlier_q = _codes(x_out / outlier_scale[..., None], spec.outlier_qmin,
                         spec.outlier_qmax, None, rnd, clip_passthrough)
    else:
      lo = jnp.minimum(jnp.min(ref, axis=-1), 0.0)
      hi = jnp.maximum(jnp.max(ref, axis=-1), 0.0)
      outlier_scale = jnp.maximum(hi - lo, MIN_SCALE) / spec.outlier_qmax
      outlier_z = jnp.round(-lo / outlier_scale)
      outlier_q = _codes(x_out / outlier_scale[..., None], spec.outlier_qmin,
                         spec.outlier_qmax, outlier_z[..., None], rnd, clip_passthrough)
  elif spec.outliers == 'float':
    outlier_q, outlier_scale = x_out, ones
  else:
    outlier_q, outlier_scale = jnp.zeros_like(x), ones
  return QuantizedParts(inlier_q, inlier_scale.astype(jnp.float32), z, outlier_q, outlier_scale,
                        outlier_z, mask)


def dequantize_parts(parts) -> jax.Array:
  """The float activation of QuantizedParts or IntActivation (integer arrays are cast first)."""
  f32 = lambda a: None if a is None else a.astype(jnp.float32)
  s = f32(parts.inlier_scale)[None, :, None]
  inl = f32(parts.inlier_q)
  if parts.inlier_zero_point is not None:
    inl = inl - f32(parts.inlier_zero_point)[None, :, None]
  out = f32(parts.outlier_q)
  if parts.outlier_zero_point is not None:
    out = out - f32(parts.outlier_zero_point)[..., None]
  return inl * s + out * f32(parts.outlier_scale)[..., None]


def fake_quantize_activation(x, inlier_scale, spec: ActSpec, zero_point=None):
  """Quantize-dequantize with straight-through rounding (differentiable in x and the scale).

  Any input shape: (B, L, C) per step, anything else as a single step (per-tensor scale).
  """
  x3, restore = as_steps(x)
  y = dequantize_parts(quantize_parts(x3, inlier_scale, spec, zero_point, ste=True))
  return restore(y.astype(x.dtype))


def quantize_activation_int(x, inlier_scale, spec: ActSpec, zero_point=None) -> IntActivation:
  """Integer form. x: (B, L, C); inlier_scale: (L,) static steps S_I(t) (+ zero points (L,)
  for an asymmetric spec). See `IntActivation` for the layout; `dequantize_activation` inverts
  it bit-exactly to `fake_quantize_activation(x, ...)`."""
  if x.ndim != 3:
    raise ValueError(f'quantize_activation_int expects (B, L, C), got shape {x.shape}; reshape '
                     'per-tensor sites to (1, 1, size) first.')
  p = quantize_parts(x, inlier_scale, spec, zero_point, ste=False)
  in_dtype = int_dtype(spec.qmin, spec.qmax)
  as_int = lambda a: None if a is None else a.astype(jnp.int32)
  if spec.outliers == 'int':
    outlier_q = p.outlier_q.astype(int_dtype(spec.outlier_qmin, spec.outlier_qmax))
  elif spec.outliers == 'float':
    outlier_q = p.outlier_q
  else:
    outlier_q = p.outlier_q.astype(jnp.int8)
  return IntActivation(p.inlier_q.astype(in_dtype), p.inlier_scale, as_int(p.inlier_zero_point),
                       outlier_q, p.outlier_scale, as_int(p.outlier_zero_point), p.outlier_mask)


def dequantize_activation(q: IntActivation) -> jax.Array:
  return dequantize_parts(q)

"""Activation quantizer with a static per-step inlier scale and dynamic outlier channels.

The run-time numerics (outlier recurrence, codes, scales) are the act_quant op's reference,
`kernels_pallas.act_quant.reference` (its docstring states the algorithm and the decisions the
paper leaves open); this module adds what only the library needs, on `ActSpec`s:

- the fake-quant form (`quantize_parts(..., ste=True)`, for learning S_I): the reference's
  `quantize_parts` with straight-through rounding and clipping, the same codes as the integer
  form, so its dequantized values equal the int mode's bit for bit (`qtypes.ActQuantizer`
  calls either);
- calibration (`static_outlier_mask`, `calibrate_inlier_scale`);
- views of other shapes (`as_steps`): (B, C) and VMamba's (B, H, W, C) grids as steps, and
  per-tensor sites (A: (Di, N), D: (Di,)) as a single step holding all their elements: one
  static per-tensor scale, same outlier logic.

Gradients (fake form): straight-through round; inlier codes clip with gradient 1 on the closed
grid and 0 outside (LSQ); outlier codes pass the gradient everywhere (their dynamic grid is
sized to hold them; its step is a constant); the outlier mask has no gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.act_quant import reference
from kernels_pallas.act_quant.reference import IntActivation
from ouromamba_jax.quant import search
from ouromamba_jax.quant.config import ActSpec

dequantize_activation = reference.dequantize  # IntActivation (integer or STE float codes) -> x


@jax.custom_vjp
def round_ste(x):
  """round-half-to-even forward, identity gradient (straight-through estimator)."""
  return jnp.round(x)


def _round_fwd(x):
  return jnp.round(x), None


def _round_bwd(_, g):
  return (g,)


round_ste.defvjp(_round_fwd, _round_bwd)


def as_steps(x, layout: str):
  """Views x as (B, L, C) steps. Returns (x3, restore).

  layout 'steps': (B, L, C) as is, (B, C) as one step per sample, (B, H, W, C) as its H*W
  row-major tokens (VMamba's grids, the order its row-major scan reads); 'tensor': one step holding
  every element (A, D: a static per-tensor scale).
  """
  shape = x.shape
  if layout == 'tensor':
    return x.reshape(1, 1, -1), lambda y: y.reshape(shape)
  if layout != 'steps':
    raise ValueError(f"layout must be 'steps' or 'tensor', got {layout!r}")
  if x.ndim == 3:
    return x, lambda y: y
  if x.ndim == 2:
    return x[:, None, :], lambda y: y.reshape(shape)
  if x.ndim > 3:  # a grid of tokens (B, H, W, C): the steps are its row-major tokens
    return x.reshape(shape[0], -1, shape[-1]), lambda y: y.reshape(shape)
  raise ValueError(f'a per-step activation quantizer expects (B, L, C) or (B, C), got {shape}.')


def static_outlier_mask(x, spec: ActSpec):
  """Calibration-time extraction (official `extracter_refresh`): flag |x_t| > mu + k sigma at
  every step (no trigger, no scale yet), then OR cumulatively within each refresh window."""
  length = x.shape[1]
  if spec.outliers == 'none':
    return jnp.zeros(x.shape, bool)
  abs_x = jnp.abs(x.astype(jnp.float32))
  flags = abs_x > reference.threshold(abs_x, spec.kernel_params)
  n_windows, n_steps = reference.windows(length, spec.n_refresh)
  windows = reference.to_windows(flags.astype(jnp.int32), n_windows, n_steps, 0)  # (n, B, G, C)
  return reference.from_windows(jnp.cumsum(windows, axis=0) > 0, length)


def calibrate_inlier_scale(x, spec: ActSpec, layout: str):
  """Static inlier step per time step from calibration activations.

  x: (N, L, C) (or any shape for a per-tensor site, layout 'tensor'). Outliers found by
  `static_outlier_mask` are zeroed, then the lp search runs per step over the pooled (samples,
  channels).
  Returns (scale (L,), zero_point (L,) integer-valued float, or None when symmetric).
  """
  x3, _ = as_steps(jnp.asarray(x, jnp.float32), layout)
  x_in = jnp.where(static_outlier_mask(x3, spec), 0.0, x3)
  kw = dict(reduce_axes=(0, 2), lp=spec.lp, n_grid=spec.n_grid, init=spec.init)
  if spec.symmetric:
    return search.search_symmetric_scale(x_in, spec.qmax, **kw).reshape(-1), None
  scale, zero_point = search.search_asymmetric_range(x_in, spec.qmax, **kw)
  return scale.reshape(-1), zero_point.reshape(-1)


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


def detect_outliers(x, inlier_scale, spec: ActSpec):
  """The run-time outlier mask (B, L, C) of x (B, L, C) (`reference.detect_outliers`)."""
  return reference.detect_outliers(x, inlier_scale, spec.kernel_params)


def quantize_parts(x, inlier_scale, spec: ActSpec, zero_point=None, *,
                   ste: bool) -> IntActivation:
  """Codes of x (B, L, C) as integer-valued float: straight-through (`ste`, the fake form) or
  plain rounding; the same values either way."""
  if not ste:
    return reference.quantize_parts(x, inlier_scale, spec.kernel_params, zero_point)
  return reference.quantize_parts(x, inlier_scale, spec.kernel_params, zero_point, rnd=round_ste,
                                  inlier_clip=clip_ste, outlier_clip=clip_passthrough)

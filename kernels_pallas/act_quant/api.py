"""Public entry point of OuroMamba's per-time-step activation quantizer (integer form).

    act_quant(x (B, L, C), inlier_scale (L,), spec) -> IntActivation
      inlier_q       (B, L, C) int8 codes on the static step S_I(t) (0 at outlier channels),
                     or (B, L, C/2) packed int4 with pack_int4=True (the mixed GEMM's format)
      inlier_scale   (L,) the steps actually used (floored at 1e-8)
      outlier_q      (B, L, C) int8 codes on the dynamic per-token step (0 at inliers)
      outlier_scale  (B, L) float32
      outlier_mask   (B, L, C) bool
      inlier_zero_point (L,) / outlier_zero_point (B, L) int32 for asymmetric grids (Δ), else None

Semantics are those of `ouromamba_jax.quant.activations.quantize_activation_int` (the XLA
implementation, and the reference the kernel is tested against code for code).

implementation: None -> 'triton' on GPU when the kernel covers the spec, except int outliers with
trigger='batch', else 'xla' (the batch-trigger kernel re-reads the whole batch per program and
measured 4-5x slower than XLA, BENCHMARKS.md); 'triton' -> the Pallas kernel, also for 'batch'
(`interpret=None` runs it in the Pallas interpreter off-GPU). The kernel covers symmetric and
asymmetric (Δ) specs with bits <= 8, outliers 'int' (outlier_bits <= 8) or 'none', and trigger
'sample' or 'batch'; 'official' (any sample and any window) and float outliers are XLA-only.

zero_point: the (L,) static zero points of an asymmetric spec (from `calibrate_inlier_scale`);
must be None for a symmetric one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas import _pallas_compat as compat
from kernels_pallas.act_quant import reference
from kernels_pallas.act_quant.config import MAX_BLOCK_C, ActQuantBlockConfig
from ouromamba_jax.quant.activations import IntActivation
from ouromamba_jax.quant.config import ActSpec

IMPLEMENTATIONS = ('xla', 'triton')


def kernel_unsupported_reason(spec: ActSpec, channels: int) -> str | None:
  """Why the Pallas kernel cannot run this spec (None when it can)."""
  if spec.bits > 8:
    return f'bits={spec.bits} > 8 (codes would not fit int8)'
  if spec.outliers not in ('int', 'none'):
    return f"outliers={spec.outliers!r} (float outliers are XLA-only; use 'int' or 'none')"
  if spec.outliers == 'int' and spec.outlier_bits > 8:
    return f'outlier_bits={spec.outlier_bits} > 8'
  if spec.outliers == 'int' and spec.trigger not in ('sample', 'batch'):
    return (f"trigger={spec.trigger!r} couples every window of the sequence; the kernel "
            "supports 'sample' and 'batch'")
  if channels > MAX_BLOCK_C:
    return f'C={channels} channels exceed the one-block limit {MAX_BLOCK_C}'
  return None


def default_implementation(spec: ActSpec, channels: int) -> str:
  """'triton' on GPU where it is faster than XLA: covered specs, except int outliers with
  trigger='batch' (that kernel measured 4-5x slower than XLA, BENCHMARKS.md); else 'xla'."""
  if (jax.default_backend() == 'gpu' and kernel_unsupported_reason(spec, channels) is None
      and not (spec.outliers == 'int' and spec.trigger == 'batch')):
    return 'triton'
  return 'xla'


def _check_zero_point(zero_point, spec: ActSpec, length: int) -> None:
  """Zero points exist only on asymmetric grids, one per time step: a wrong shape would be read
  past its end by the kernel (or fail as an opaque broadcast in XLA)."""
  if spec.symmetric:
    if zero_point is not None:
      raise ValueError('act_quant: a symmetric ActSpec has no zero points, got zero_point of '
                       f'shape {jnp.shape(zero_point)}; pass zero_point=None (or use an '
                       'ActSpec with symmetric=False).')
    return
  if zero_point is None:
    raise ValueError(f'act_quant: an asymmetric ActSpec needs its zero points ({length},); '
                     'calibrate them with `calibrate_inlier_scale`.')
  if jnp.shape(zero_point) != (length,):
    raise ValueError(f'act_quant: zero_point must have shape ({length},) (one zero point per '
                     f'time step), got {jnp.shape(zero_point)}; calibrate it with '
                     '`calibrate_inlier_scale` for this sequence length.')


def act_quant(x, inlier_scale, spec: ActSpec, zero_point=None, *, pack_int4: bool = False,
              implementation: str | None = None, interpret: bool | None = None,
              block_config: ActQuantBlockConfig | None = None) -> IntActivation:
  """Quantizes activations x (B, L, C) with static per-step scales (L,); see module docstring.
  `interpret=None` runs the Triton kernel in the Pallas interpreter unless JAX is on a GPU."""
  if not isinstance(spec, ActSpec):
    raise TypeError(f'act_quant: spec must be an ActSpec, got {type(spec).__name__}.')
  if x.ndim != 3 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'act_quant: x must be a float (B, L, C) array, got {x.dtype}{x.shape}.')
  batch, length, channels = x.shape
  if inlier_scale.shape != (length,):
    raise ValueError(f'act_quant: inlier_scale must have shape ({length},) (one static step per '
                     f'time step), got {inlier_scale.shape}; recalibrate for this sequence '
                     'length.')
  if pack_int4 and (spec.bits > 4 or channels % 2 or not spec.symmetric):
    raise ValueError(f'act_quant: pack_int4 needs a symmetric grid with bits <= 4 and an even C, '
                     f'got bits={spec.bits}, symmetric={spec.symmetric}, C={channels}.')
  _check_zero_point(zero_point, spec, length)
  impl = implementation or default_implementation(spec, channels)
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f'act_quant: unknown implementation {impl!r}; choose one of '
                     f'{IMPLEMENTATIONS} or None for the platform default.')
  if impl == 'xla':
    return reference.act_quant_xla(x, inlier_scale, spec, zero_point, pack=pack_int4)

  reason = kernel_unsupported_reason(spec, channels)
  if reason is not None:
    raise ValueError(f"act_quant: implementation='triton' cannot run this spec: {reason}. Use "
                     "implementation='xla' (or None to pick it automatically).")
  from kernels_pallas.act_quant import pallas_triton  # pylint: disable=g-import-not-at-top
  block_c, num_warps = (block_config or ActQuantBlockConfig()).resolve(channels)
  q_in, q_out, o_scale, mask, scale, o_zero = pallas_triton.act_quant(
      x, inlier_scale, zero_point,
      code_range=(spec.qmin, spec.qmax, spec.outlier_qmin, spec.outlier_qmax), k=float(spec.k),
      n_refresh=int(spec.n_refresh), trigger=spec.trigger, std_ddof=int(spec.std_ddof),
      detect=spec.outliers == 'int', pack=pack_int4, block_c=block_c, num_warps=num_warps,
      interpret=compat.resolve_interpret(interpret))
  in_zero = None if spec.symmetric else zero_point.astype(jnp.int32)
  return IntActivation(inlier_q=q_in, inlier_scale=scale, inlier_zero_point=in_zero,
                       outlier_q=q_out, outlier_scale=o_scale, outlier_zero_point=o_zero,
                       outlier_mask=mask)

"""Public entry point of the mixed-precision (int4/int8) GEMM of the real-quantized path.

    y = w_scale * (a_scale * (xin @ w) + o_scale * (xout @ w)) (+ bias)

Operands (leading dims of x are flattened into M = tokens, one row per time step per sample):
  x_inlier  (..., K) int8 codes, one per byte whatever their bit width (act_quant writes int4
            codes so: Hopper has no int4 MMA, and unpacking in the K loop costs 3x).
  a_scale   (...,) per-token inlier scale, or (L,) per step (x's last token axis, L): the same
            for every sample (OuroMamba's static S_I(t)), read in the epilogue by the row's
            step, so no (B, L) copy is made for each call.
  a_floor   optional: a_scale is raised to it in the epilogue (act_quant's MIN_SCALE), so a
            quantizer's raw steps need no clamp pass before the call.
  w         K-major (N channels, K last), the layout Hopper's int8 MMA reads:
            weight_bits=4: (N, K/2) int8/uint8, int4 packed in halves along K (byte j = lanes j
            and j + K/2, `kernels_pallas.int4`); weight_bits=8: (N, K) int8.
  w_scale   (N,) per-output-channel weight scale.
  x_outlier optional (..., K) int8 outlier codes, zero outside the outlier channels.
  o_scale   (...,) per-token outlier scale (required with x_outlier).
  bias      optional (N,).
Returns (..., N) in out_dtype (bf16 by default). Sums are exact int32.

implementation (`kernels_pallas._dispatch`): None -> 'triton' on GPU, 'xla' elsewhere; 'xla' is
two integer `lax.dot`s, 'triton' the fused Pallas kernel (`interpret`: None = interpret when not
on a GPU, so it also runs on CPU, for tests).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas import _dispatch
from kernels_pallas import _pallas_compat as compat
from kernels_pallas.mixed_gemm import pallas_triton
from kernels_pallas.mixed_gemm import reference
from kernels_pallas.mixed_gemm.config import MixedGemmBlockConfig, default_block_config

DISPATCH = _dispatch.Dispatch(
    op='mixed_gemm',
    implementations=(_dispatch.Implementation('xla'), _dispatch.Implementation('triton')),
    preference={'gpu': ('triton',), 'default': ('xla',)})
IMPLEMENTATIONS = DISPATCH.names
_BITS = (4, 8)


def _as_int8(name, x):
  if x.dtype == jnp.uint8:
    return jax.lax.bitcast_convert_type(x, jnp.int8)
  if x.dtype != jnp.int8:
    raise TypeError(f'mixed_gemm: {name} must be int8 codes (uint8 for packed int4 weights), got '
                    f'{x.dtype}; quantize it first (kernels_pallas.act_quant).')
  return x


def _check_vector(name, v, length):
  if v is None:
    raise ValueError(f'mixed_gemm: {name} is required.')
  if v.shape != (length,):
    raise ValueError(f'mixed_gemm: {name} must have shape ({length},), got {v.shape}.')


def _normalize(x_inlier, a_scale, w, w_scale, x_outlier, o_scale, bias, weight_bits):
  """Validates shapes/dtypes, flattens tokens; returns 2-D operands, K and the leading shape."""
  if weight_bits not in _BITS:
    raise ValueError(f'mixed_gemm: weight_bits={weight_bits}; must be one of {_BITS}.')
  if w.ndim != 2:
    raise ValueError(f'mixed_gemm: w must be 2-D and K-major, (N, K/2) packed int4 or (N, K) '
                     f'int8, got shape {w.shape}.')
  w = _as_int8('w', w)
  x_inlier = _as_int8('x_inlier', x_inlier)
  k = w.shape[1] * (2 if weight_bits == 4 else 1)
  n = w.shape[0]
  lead = x_inlier.shape[:-1]
  if x_inlier.ndim < 2 or x_inlier.shape[-1] != k:
    raise ValueError(
        f'mixed_gemm: x_inlier has shape {x_inlier.shape}; with K={k} (from w {w.shape}, '
        f'weight_bits={weight_bits}) its last dim must be {k} (one code per byte).')
  m = 1
  for d in lead:
    m *= d
  if a_scale is None or a_scale.shape not in (lead, lead[-1:]):
    raise ValueError(f'mixed_gemm: a_scale must have the token shape {lead} or the per-step '
                     f'shape {lead[-1:]}, got {None if a_scale is None else a_scale.shape}.')
  _check_vector('w_scale', w_scale, n)
  x2 = x_inlier.reshape(m, k)
  a2 = a_scale.reshape(-1)  # (M,) per token, or (L,) per step
  xo2 = o2 = None
  if x_outlier is not None:
    x_outlier = _as_int8('x_outlier', x_outlier)
    if x_outlier.shape != lead + (k,):
      raise ValueError(f'mixed_gemm: x_outlier must be int8 codes of shape {lead + (k,)} (one per '
                       f'channel, zero for inliers), got {x_outlier.shape}.')
    if o_scale is None or o_scale.shape != lead:
      raise ValueError(f'mixed_gemm: o_scale must have the token shape {lead} when x_outlier is '
                       f'given, got {None if o_scale is None else o_scale.shape}.')
    xo2, o2 = x_outlier.reshape(m, k), o_scale.reshape(m)
  elif o_scale is not None:
    raise ValueError('mixed_gemm: o_scale given without x_outlier.')
  if bias is not None:
    _check_vector('bias', bias, n)
  return x2, a2, w, xo2, o2, k, lead


def _tile(block_config, m: int, n: int, k: int, outliers: bool,
          weight_bits: int) -> MixedGemmBlockConfig:
  """The asked-for tile, or the default for (M, N, K); refused here if it cannot launch."""
  cfg = block_config or default_block_config(m, n, k, weight_bits)
  cfg.check_shared_memory(outliers)
  return cfg


def mixed_gemm(x_inlier, a_scale, w, w_scale, x_outlier=None, o_scale=None, bias=None, *,
               weight_bits: int = 4, out_dtype=jnp.bfloat16,
               a_floor: float | None = None, implementation: str | None = None,
               interpret: bool | None = None, block_config: MixedGemmBlockConfig | None = None):
  """Dequantized int GEMM; see the module docstring for operand layouts. Returns (..., N)."""
  impl = DISPATCH.choose(implementation)
  x2, a2, w, xo2, o2, k, lead = _normalize(x_inlier, a_scale, w, w_scale, x_outlier, o_scale,
                                           bias, weight_bits)
  n, m = w.shape[0], x2.shape[0]
  a_period = a2.shape[0] if a2.shape[0] != m else None
  if impl == 'xla':
    y = reference.mixed_gemm_xla(x2, reference.token_scales(a2, m, a_floor), w, w_scale, xo2,
                                 o2, bias, weight_bits=weight_bits, out_dtype=out_dtype)
  else:
    cfg = _tile(block_config, m, n, k, xo2 is not None, weight_bits)
    y = pallas_triton.mixed_gemm(x2, a2, w, w_scale, xo2, o2, bias, k=k, weight_bits=weight_bits,
                                 out_dtype=jnp.dtype(out_dtype), cfg=cfg,
                                 a_period=a_period,
                                 a_floor=None if a_floor is None else float(a_floor),
                                 interpret=compat.resolve_interpret(interpret))
  return y.reshape(lead + (n,))


def mixed_gemm_accumulators(x_inlier, w, x_outlier=None, *, weight_bits: int = 4,
                            implementation: str | None = None,
                            interpret: bool | None = None,
                            block_config: MixedGemmBlockConfig | None = None):
  """The exact int32 sums (xin @ w, xout @ w or None), each (..., N): for tests and debugging."""
  impl = DISPATCH.choose(implementation)
  lead = x_inlier.shape[:-1]
  ones = jnp.ones(lead, jnp.float32)
  x2, _, w, xo2, _, k, lead = _normalize(
      x_inlier, ones, w, jnp.ones((w.shape[0],), jnp.float32), x_outlier,
      None if x_outlier is None else ones, None, weight_bits)
  n = w.shape[0]
  if impl == 'xla':
    acc_in, acc_out = reference.accumulators_xla(x2, w, xo2, weight_bits=weight_bits)
  else:
    cfg = _tile(block_config, x2.shape[0], n, k, xo2 is not None, weight_bits)
    acc_in, acc_out = pallas_triton.accumulators(x2, w, xo2, k=k, weight_bits=weight_bits,
                                                 cfg=cfg,
                                                 interpret=compat.resolve_interpret(interpret))
  reshape = lambda a: None if a is None else a.reshape(lead + (n,))
  return reshape(acc_in), reshape(acc_out)

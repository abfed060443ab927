"""The XLA twin of the mixed-precision GEMM.

Operands: activations are int8 codes (M, K), one per byte whatever their bit width; weights
are K-major (N, K), the reduction axis last: int4 ones packed two per byte along K in the
format of `kernels_pallas.int4`, (N, K/2); int8 ones plain (N, K).

GEMM (one output row m = one time step of one sample; one column n = one output channel):
  y[m, n] = w_scale[n] * (a_scale[m] * sum_k xin[m, k] w[n, k]
                          + o_scale[m] * sum_k xout[m, k] w[n, k]) (+ bias[n])
with exact int32 sums. xin are the inlier codes, xout the int8 outlier codes (zero where a
channel is not an outlier). The XLA form is two integer `lax.dot`s with int32 results.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.int4 import unpack_int4
from kernels_pallas.rounding import rounded_to

FLOAT_EXACT = 2 ** 24   # every integer of magnitude up to this is an exact float32
_CONTRACT_K = (((1,), (1,)), ((), ()))  # (M, K) x (N, K) -> (M, N)


def int_dot(x, w, x_bits: int, w_bits: int):
  """x @ w.T of integer codes x (M, K) and a K-major w (N, K) as exact int32 sums.

  XLA's CPU backend runs integer dots as plain loops, several times slower than its float
  GEMM (the testbed's int-mode forward ran at 0.5–0.7x the fake-quant speed, issue 16). On CPU,
  when no partial sum can exceed 2^24 (|codes| <= 2^(bits-1), K terms), a float32 dot gives the
  same integers exactly; elsewhere (GPU: TF32 may round) or beyond the bound, an int32 dot."""
  k = x.shape[-1]
  if jax.default_backend() == 'cpu' and 2 ** (x_bits - 1) * 2 ** (w_bits - 1) * k <= FLOAT_EXACT:
    acc = jax.lax.dot_general(x.astype(jnp.float32), w.astype(jnp.float32), _CONTRACT_K,
                              precision=jax.lax.Precision.HIGHEST)
    return acc.astype(jnp.int32)
  return jax.lax.dot_general(x, w, _CONTRACT_K, preferred_element_type=jnp.int32)


def accumulators_xla(x_inlier, w, x_outlier=None, *, weight_bits: int = 4):
  """Exact int32 sums (xin @ w, xout @ w); the outlier one is None without outliers."""
  w8 = unpack_int4(w, axis=-1) if weight_bits == 4 else w
  acc_in = int_dot(x_inlier, w8, 8, weight_bits)
  acc_out = None
  if x_outlier is not None:
    acc_out = int_dot(x_outlier, w8, 8, weight_bits)
  return acc_in, acc_out


def token_scales(a_scale, m: int, a_floor=None):
  """(M,) per-token inlier scales from a_scale given per token (M,) or per step (L,), row r
  reading step r mod L, raised to `a_floor` where given: what the kernel's epilogue reads."""
  a = a_scale.astype(jnp.float32)
  if a.shape[0] != m:
    a = jnp.broadcast_to(a, (m // a.shape[0], a.shape[0])).reshape(m)
  return a if a_floor is None else jnp.maximum(a, jnp.float32(a_floor))


def dequantize(acc_in, a_scale, w_scale, acc_out=None, o_scale=None, bias=None,
               out_dtype=jnp.bfloat16):
  """The epilogue, in fp32: per-token scales on the rows, per-channel scale on the columns;
  then the bias, added in out_dtype (what a separate add after the GEMM computes)."""
  y = a_scale.astype(jnp.float32)[:, None] * acc_in.astype(jnp.float32)
  if acc_out is not None:
    y = y + o_scale.astype(jnp.float32)[:, None] * acc_out.astype(jnp.float32)
  y = y * w_scale.astype(jnp.float32)[None, :]
  if bias is None:
    return y.astype(out_dtype)
  return (rounded_to(y, out_dtype) + rounded_to(bias, out_dtype)[None, :]).astype(out_dtype)


def mixed_gemm_xla(x_inlier, a_scale, w, w_scale, x_outlier=None, o_scale=None, bias=None, *,
                   weight_bits: int = 4, out_dtype=jnp.bfloat16):
  """XLA twin of the fused kernel: integer matmuls in int32, then the same fp32 epilogue."""
  acc_in, acc_out = accumulators_xla(x_inlier, w, x_outlier, weight_bits=weight_bits)
  return dequantize(acc_in, a_scale, w_scale, acc_out, o_scale, bias, out_dtype)


def outlier_tiles(x_outlier, block_m: int):
  """The kernel's outlier lists: per tile of `block_m` token rows, the channels where any row
  has a non-zero outlier code, first and ascending in a (tiles, K) int32 index array, and how
  many there are (tiles,) int32. A tile covers a few refresh windows, so this is the union of
  their outlier sets (a flagged channel whose code rounds to 0 adds nothing and may be left out).
  """
  m, k = x_outlier.shape
  tiles = -(-m // block_m)
  flagged = jnp.pad(x_outlier != 0, ((0, tiles * block_m - m), (0, 0)))
  flagged = flagged.reshape(tiles, block_m, k).any(axis=1)
  index = jnp.argsort(~flagged, axis=1, stable=True).astype(jnp.int32)
  return index, flagged.sum(axis=1, dtype=jnp.int32)

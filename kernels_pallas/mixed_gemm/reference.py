"""The int4/int8 storage format and the XLA twin of the mixed-precision GEMM.

Format (shared by the kernel, the quantization pass and the tests):
  * int4 values are signed two's-complement nibbles (the quantizers use [-7, 7]), packed two per
    int8 byte along K (the reduction axis): the low nibble holds the even k, the high nibble the
    odd k. Weights: (K/2, N); packed activations: (M, K/2). uint8 storage is accepted by the API
    and bit-cast.
  * int8 operands are plain (K, N) / (M, K).

GEMM (one output row m = one time step of one sample; one column n = one output channel):
  y[m, n] = w_scale[n] * (a_scale[m] * sum_k xin[m, k] w[k, n]
                          + o_scale[m] * sum_k xout[m, k] w[k, n]) (+ bias[n])
with exact int32 sums. xin are the inlier codes, xout the int8 outlier codes (zero where a
channel is not an outlier). The XLA form is two integer `lax.dot`s with int32 results.

The small nibble/lane helpers below are plain jnp, so the Pallas kernel uses the very same code
inside its tiles (shifts, reshape and a size-2 unstack/stack all lower to Triton).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

INT4_MAX = 7  # narrow symmetric range used by every int4 quantizer here


def unpack_nibbles(packed):
  """int8 bytes -> (low, high) sign-extended int4 values as int8 (even k, odd k)."""
  four = jnp.int8(4)
  low = jax.lax.shift_right_arithmetic(jax.lax.shift_left(packed, four), four)
  high = jax.lax.shift_right_arithmetic(packed, four)
  return low, high


def split_even_odd(x):
  """(..., 2n) -> (x[..., 0::2], x[..., 1::2]) as a reshape plus a size-2 unstack."""
  x = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  even, odd = jnp.unstack(x, axis=-1)
  return even, odd


def interleave(even, odd):
  """Inverse of `split_even_odd`: out[..., 2i] = even[..., i], out[..., 2i+1] = odd[..., i]."""
  stacked = jnp.stack([even, odd], axis=-1)
  return stacked.reshape(even.shape[:-1] + (2 * even.shape[-1],))


def pack_int4(values, axis: int = -1):
  """Packs int4 values (any int dtype, in [-8, 7]) two per int8 byte along `axis` (even k low)."""
  if values.shape[axis] % 2:
    raise ValueError(f'pack_int4: axis {axis} has odd length {values.shape[axis]}; int4 packing '
                     'pairs neighbours, so pad that axis to an even length with zeros first.')
  v = jnp.moveaxis(values.astype(jnp.int8), axis, -1)
  even, odd = split_even_odd(v)
  packed = jnp.bitwise_or(jnp.bitwise_and(even, jnp.int8(0x0F)),
                          jax.lax.shift_left(odd, jnp.int8(4)))
  return jnp.moveaxis(packed, -1, axis)


def unpack_int4(packed, axis: int = -1):
  """Inverse of `pack_int4`: int8 (or uint8) bytes -> int8 values, `axis` doubled in length."""
  if packed.dtype == jnp.uint8:
    packed = jax.lax.bitcast_convert_type(packed, jnp.int8)
  p = jnp.moveaxis(packed, axis, -1)
  low, high = unpack_nibbles(p)
  return jnp.moveaxis(interleave(low, high), -1, axis)


def accumulators_xla(x_inlier, w, x_outlier=None, *, weight_bits: int = 4, act_bits: int = 4):
  """Exact int32 sums (xin @ w, xout @ w); the outlier one is None without outliers."""
  w8 = unpack_int4(w, axis=0) if weight_bits == 4 else w
  x8 = unpack_int4(x_inlier, axis=-1) if act_bits == 4 else x_inlier
  acc_in = jax.lax.dot(x8, w8, preferred_element_type=jnp.int32)
  acc_out = None
  if x_outlier is not None:
    acc_out = jax.lax.dot(x_outlier, w8, preferred_element_type=jnp.int32)
  return acc_in, acc_out


def dequantize(acc_in, a_scale, w_scale, acc_out=None, o_scale=None, bias=None,
               out_dtype=jnp.bfloat16):
  """The epilogue, in fp32: per-token scales on the rows, per-channel scale on the columns."""
  y = a_scale.astype(jnp.float32)[:, None] * acc_in.astype(jnp.float32)
  if acc_out is not None:
    y = y + o_scale.astype(jnp.float32)[:, None] * acc_out.astype(jnp.float32)
  y = y * w_scale.astype(jnp.float32)[None, :]
  if bias is not None:
    y = y + bias.astype(jnp.float32)[None, :]
  return y.astype(out_dtype)


def mixed_gemm_xla(x_inlier, a_scale, w, w_scale, x_outlier=None, o_scale=None, bias=None, *,
                   weight_bits: int = 4, act_bits: int = 4, out_dtype=jnp.bfloat16):
  """XLA twin of the fused kernel: integer matmuls in int32, then the same fp32 epilogue."""
  acc_in, acc_out = accumulators_xla(x_inlier, w, x_outlier, weight_bits=weight_bits,
                                     act_bits=act_bits)
  return dequantize(acc_in, a_scale, w_scale, acc_out, o_scale, bias, out_dtype)

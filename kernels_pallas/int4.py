"""The one int4 format of the project: two's-complement nibbles, two per byte.

Used for int4 weights: along the packed axis (K, the input axis of a weight (K, N)) byte i holds
value 2i in its low nibble and value 2i + 1 in its high nibble. The bytes are int8 in XLA
(arithmetic shifts sign-extend the nibbles); quantized checkpoints store the very same bytes as
uint8, which `unpack_int4` and the mixed GEMM accept by bit-casting. Activation codes are never
packed (the mixed GEMM reads one code per byte), and the GEMM unpacks its weight in XLA, off the
kernel's K loop, so these helpers run in XLA only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _unpack_nibbles(packed):
  """int8 bytes -> (low, high) sign-extended int4 values as int8 (even k, odd k)."""
  four = jnp.int8(4)
  low = jax.lax.shift_right_arithmetic(jax.lax.shift_left(packed, four), four)
  high = jax.lax.shift_right_arithmetic(packed, four)
  return low, high


def _split_even_odd(x):
  """(..., 2n) -> (x[..., 0::2], x[..., 1::2]) as a reshape plus a size-2 unstack."""
  x = x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
  even, odd = jnp.unstack(x, axis=-1)
  return even, odd


def _interleave(even, odd):
  """Inverse of `_split_even_odd`: out[..., 2i] = even[..., i], out[..., 2i+1] = odd[..., i]."""
  stacked = jnp.stack([even, odd], axis=-1)
  return stacked.reshape(even.shape[:-1] + (2 * even.shape[-1],))


def _pack_nibbles(even, odd):
  """int8 values in [-8, 7] -> int8 bytes (even in the low nibble, odd in the high one)."""
  return jnp.bitwise_or(jnp.bitwise_and(even, jnp.int8(0x0F)), jax.lax.shift_left(odd, jnp.int8(4)))


def pack_int4(values, axis: int = -1):
  """Packs int4 values (any int dtype, in [-8, 7]) two per int8 byte along `axis` (even k low)."""
  if values.shape[axis] % 2:
    raise ValueError(f'pack_int4: axis {axis} has odd length {values.shape[axis]}; int4 packing '
                     'pairs neighbours, so pad that axis to an even length with zeros first.')
  v = jnp.moveaxis(values.astype(jnp.int8), axis, -1)
  return jnp.moveaxis(_pack_nibbles(*_split_even_odd(v)), -1, axis)


def unpack_int4(packed, axis: int = -1):
  """Inverse of `pack_int4`: int8 (or uint8) bytes -> int8 values, `axis` doubled in length."""
  if packed.dtype == jnp.uint8:
    packed = jax.lax.bitcast_convert_type(packed, jnp.int8)
  p = jnp.moveaxis(packed, axis, -1)
  return jnp.moveaxis(_interleave(*_unpack_nibbles(p)), -1, axis)

"""The one int4 format of the project: two's-complement nibbles, two per byte.

Used for int4 weights: along the packed axis (K, the input axis of a weight (K, N)) byte i holds
value 2i in its low nibble and value 2i + 1 in its high nibble. The bytes are int8 in XLA
(arithmetic shifts sign-extend the nibbles); quantized checkpoints store the very same bytes as
uint8, which `unpack_int4` and the mixed GEMM accept by bit-casting. Activation codes are never
packed (the mixed GEMM reads one code per byte). The GEMM unpacks its weight in XLA, off the
kernel's K loop, except for small calls that read it as stored (`MixedGemmBlockConfig.
weights_as_stored`): those unpack a tile in registers with `unpack_nibbles`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# How `unpack_int4` spreads the nibbles. 1: one elementwise pass, each byte read twice and
# shifted by its output lane's parity ((b << 4) >> 4 for the low nibble, b >> 4 for the high
# one), writes contiguous. 0: the two nibble planes interleaved by a stack, which XLA makes a
# concatenate fusion with byte-strided writes: on an H100 the mixed GEMM's per-call weight unpack
# in that form took 0.45 ms of device time per Vim-B forward (session 29's profile,
# `stack · int4.py interleave`). Same values either way; `bench/e2e_latency.py
# --int4_shift_unpack=0/1` A/Bs them.
SHIFT_UNPACK = 1


def unpack_nibbles(packed):
  """int8 bytes -> (low, high) sign-extended int4 values as int8 (even k, odd k); elementwise,
  so it also runs on a tile inside a kernel."""
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


def _unpack_by_parity(p):
  """(..., n) bytes -> (..., 2n) values: lane 2i + j is byte i's nibble j, as one elementwise
  expression of the byte repeated twice (no interleaving stack)."""
  n = p.shape[-1]
  repeated = jnp.broadcast_to(p[..., None], p.shape + (2,)).reshape(p.shape[:-1] + (2 * n,))
  odd = jax.lax.broadcasted_iota(jnp.int32, repeated.shape, repeated.ndim - 1) & 1
  shift = (4 - 4 * odd).astype(jnp.int8)  # 4 on even lanes, 0 on odd ones
  return jax.lax.shift_right_arithmetic(jax.lax.shift_left(repeated, shift), jnp.int8(4))


def unpack_int4(packed, axis: int = -1):
  """Inverse of `pack_int4`: int8 (or uint8) bytes -> int8 values, `axis` doubled in length."""
  if packed.dtype == jnp.uint8:
    packed = jax.lax.bitcast_convert_type(packed, jnp.int8)
  p = jnp.moveaxis(packed, axis, -1)
  values = _unpack_by_parity(p) if SHIFT_UNPACK else _interleave(*unpack_nibbles(p))
  return jnp.moveaxis(values, -1, axis)

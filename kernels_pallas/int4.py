"""The one int4 format of the project: two's-complement nibbles, two per byte, in halves.

Used for int4 weights, which are stored K-major, (N, K) with K (the input axis) last, the layout
Hopper's int8 wgmma reads. Along the packed axis of length K, byte j holds value j in its low
nibble and value j + ceil(K/2) in its high nibble (a zero pads the high half when K is odd).
Pairing the two halves, not neighbours, is what keeps the unpack cheap everywhere: in XLA it is
one elementwise pass whose two planes are contiguous slices (no interleave, no transpose), and
in a kernel a (rows, h) byte tile unpacks into two (rows, h) tiles that meet two contiguous
(rows, h) activation tiles, so nothing is shuffled in registers (mixed_gemm NOTES, session 33).

The bytes are int8 in XLA (arithmetic shifts sign-extend the nibbles); quantized checkpoints
store the very same bytes as uint8, which `unpack_int4` and the mixed GEMM accept by
bit-casting. Activation codes are never packed (the mixed GEMM reads one code per byte).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas._pallas_compat import plgpu

# Inline PTX for a kernel's unpack, four bytes per 32-bit register (`elementwise_inline_asm`,
# pack=4): a nibble v (0..15, the two's-complement bits of s) becomes the byte s as
# ((v ^ 8) + 0x78) ^ 0x80 (s + 8 + 0x78 = s + 128 stays inside its byte, so no carry crosses
# into the next one). Written out by Triton from the jnp shifts below, the same unpack took
# 5x the SASS instructions of the GEMM's K loop (byte permutes per lane; session 33).
_SIGN_EXTEND_NIBBLES = """
xor.b32 t, t, 0x08080808;
add.u32 t, t, 0x78787878;
xor.b32 $0, t, 0x80808080;
}"""
_LOW_NIBBLES_PTX = '{\n.reg .b32 t;\nand.b32 t, $1, 0x0F0F0F0F;' + _SIGN_EXTEND_NIBBLES
_HIGH_NIBBLES_PTX = ('{\n.reg .b32 t;\nshr.u32 t, $1, 4;\nand.b32 t, t, 0x0F0F0F0F;'
                     + _SIGN_EXTEND_NIBBLES)


def unpack_nibbles(packed):
  """int8 bytes -> (low, high) sign-extended int4 values as int8; elementwise, so it also runs
  on a tile inside a kernel (the Pallas interpreter's form of `unpack_nibbles_in_kernel`)."""
  four = jnp.int8(4)
  low = jax.lax.shift_right_arithmetic(jax.lax.shift_left(packed, four), four)
  high = jax.lax.shift_right_arithmetic(packed, four)
  return low, high


def unpack_nibbles_in_kernel(packed, interpret: bool):
  """`unpack_nibbles` of an int8 tile inside a Triton kernel: four bytes per instruction by
  inline PTX on a GPU (one asm per plane: JAX 0.11's lowering takes one result per asm), the
  jnp shifts in the interpreter, which runs no PTX. Equal values (tests/kernels_pallas/
  test_int4.py checks the PTX's arithmetic on every byte)."""
  if interpret:
    return unpack_nibbles(packed)
  like = [jax.ShapeDtypeStruct(packed.shape, jnp.int8)]
  (low,) = plgpu.elementwise_inline_asm(_LOW_NIBBLES_PTX, args=[packed], constraints='=r,r',
                                        pack=4, result_shape_dtypes=like)
  (high,) = plgpu.elementwise_inline_asm(_HIGH_NIBBLES_PTX, args=[packed], constraints='=r,r',
                                         pack=4, result_shape_dtypes=like)
  return low, high


def sign_extended_nibbles_by_words(words, high: bool):
  """The inline PTX's arithmetic on uint32 words (four bytes each), in XLA: what the tests hold
  the kernel's unpack to, byte for byte, where no PTX runs."""
  words = words.astype(jnp.uint32)
  nibbles = (words >> 4 if high else words) & jnp.uint32(0x0F0F0F0F)
  return ((nibbles ^ jnp.uint32(0x08080808)) + jnp.uint32(0x78787878)) ^ jnp.uint32(0x80808080)


def packed_length(length: int) -> int:
  """Bytes along the packed axis for `length` values: ceil(length / 2)."""
  return -(-length // 2)


def pack_int4(values, axis: int = -1):
  """Packs int4 values (any int dtype, in [-8, 7]) two per int8 byte along `axis`: byte j holds
  value j (low nibble) and value j + ceil(n/2) (high nibble), zero-padded when n is odd."""
  v = jnp.moveaxis(values.astype(jnp.int8), axis, -1)
  half = packed_length(v.shape[-1])
  v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, 2 * half - v.shape[-1])])
  low, high = v[..., :half], v[..., half:]
  packed = jnp.bitwise_or(jnp.bitwise_and(low, jnp.int8(0x0F)), jax.lax.shift_left(high, jnp.int8(4)))
  return jnp.moveaxis(packed, -1, axis)


def unpack_int4(packed, axis: int = -1, length: int | None = None):
  """Inverse of `pack_int4`: int8 (or uint8) bytes -> int8 values, `axis` doubled in length (or
  cut to `length`, dropping an odd length's pad). One elementwise pass: the two planes are the
  two contiguous halves of the output."""
  if packed.dtype == jnp.uint8:
    packed = jax.lax.bitcast_convert_type(packed, jnp.int8)
  values = jnp.concatenate(unpack_nibbles(jnp.moveaxis(packed, axis, -1)), axis=-1)
  if length is not None:
    values = values[..., :length]
  return jnp.moveaxis(values, -1, axis)

"""The int4 packing format of the weights (halves along K), which the mixed GEMM reads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import int4


@pytest.mark.parametrize('shape, axis', [((6, 10), 0), ((6, 10), -1), ((7, 3), 0), ((3, 601), -1)])
def test_pack_unpack_round_trip(shape, axis):
  """Even and odd lengths (an odd one pads the high half); the 601-long axis has lane indices
  past int8's range."""
  rng = np.random.default_rng(0)
  values = rng.integers(-8, 8, shape).astype(np.int8)
  length = values.shape[axis]
  packed = int4.pack_int4(jnp.asarray(values), axis=axis)
  assert packed.dtype == jnp.int8
  assert packed.shape[axis] == int4.packed_length(length) == -(-length // 2)
  np.testing.assert_array_equal(int4.unpack_int4(packed, axis=axis, length=length), values)
  as_uint8 = jax.lax.bitcast_convert_type(packed, jnp.uint8)
  np.testing.assert_array_equal(int4.unpack_int4(as_uint8, axis=axis, length=length), values)


def test_pack_layout_pairs_the_two_halves():
  packed = int4.pack_int4(jnp.asarray([[3, 5, -2, -8]], jnp.int8), axis=-1)
  # byte 0: value 0 (3) low, value 2 (-2 = 0xE) high: 0xE3; byte 1: 5 low, -8 (0x8) high: 0x85
  np.testing.assert_array_equal(np.asarray(packed).view(np.uint8), [[0xE3, 0x85]])
  odd = int4.pack_int4(jnp.asarray([1, -1, 7], jnp.int8))
  # ceil(3/2) = 2 bytes: (1, 7) and (-1, pad 0)
  np.testing.assert_array_equal(np.asarray(odd).view(np.uint8), [0x71, 0x0F])


def test_the_kernels_ptx_arithmetic_unpacks_every_byte():
  """The inline PTX of `unpack_nibbles_in_kernel` (no PTX runs on a CPU) is
  `sign_extended_nibbles_by_words`: on all 256 bytes, four to a word, it gives the shifts'
  values, low and high."""
  every_byte = np.arange(256, dtype=np.uint8)
  low, high = int4.unpack_nibbles(jnp.asarray(every_byte.view(np.int8)))
  for plane, want in ((False, low), (True, high)):
    words = jnp.asarray(every_byte.view(np.uint32))
    got = np.asarray(int4.sign_extended_nibbles_by_words(words, high=plane)).view(np.int8)
    np.testing.assert_array_equal(got, np.asarray(want))
  # and the PTX spells that arithmetic out: mask, bias by 8, move into the byte's top, unbias
  for ptx in (int4._LOW_NIBBLES_PTX, int4._HIGH_NIBBLES_PTX):  # pylint: disable=protected-access
    for constant in ('0x0F0F0F0F', '0x08080808', '0x78787878', '0x80808080'):
      assert constant in ptx
  assert 'shr.u32 t, $1, 4' in int4._HIGH_NIBBLES_PTX  # pylint: disable=protected-access


def test_in_kernel_unpack_is_the_shifts_in_the_interpreter():
  packed = jnp.asarray(np.arange(-128, 128, dtype=np.int8).reshape(16, 16))
  for got, want in zip(int4.unpack_nibbles_in_kernel(packed, interpret=True),
                       int4.unpack_nibbles(packed)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

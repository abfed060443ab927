"""The int4 packing format of the weights, which the mixed GEMM reads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import int4


@pytest.mark.parametrize('shift_unpack', [1, 0])
@pytest.mark.parametrize('shape, axis', [((6, 10), 0), ((6, 10), -1), ((600, 3), 0)])
def test_pack_unpack_round_trip(shape, axis, shift_unpack, monkeypatch):
  """Both unpack forms; the 600-long axis has lane indices past int8's range."""
  monkeypatch.setattr(int4, 'SHIFT_UNPACK', shift_unpack)
  rng = np.random.default_rng(0)
  values = rng.integers(-8, 8, shape).astype(np.int8)
  packed = int4.pack_int4(jnp.asarray(values), axis=axis)
  assert packed.dtype == jnp.int8
  assert packed.shape[axis] == values.shape[axis] // 2
  np.testing.assert_array_equal(int4.unpack_int4(packed, axis=axis), values)
  as_uint8 = jax.lax.bitcast_convert_type(packed, jnp.uint8)
  np.testing.assert_array_equal(int4.unpack_int4(as_uint8, axis=axis), values)


def test_pack_layout_low_nibble_is_even_k():
  packed = int4.pack_int4(jnp.asarray([[3, -2]], jnp.int8), axis=-1)
  # even k = 3 -> low nibble 0x3; odd k = -2 -> high nibble 0xE: byte 0xE3 = -29 as int8.
  assert int(packed[0, 0]) == np.int8(np.uint8(0xE3))


def test_pack_rejects_odd_length():
  with pytest.raises(ValueError, match='odd length'):
    int4.pack_int4(jnp.zeros((3, 5), jnp.int8), axis=-1)

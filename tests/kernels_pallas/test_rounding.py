"""kernels_pallas.rounding: bf16 rounding on the bits equals the convert pair it replaces."""
import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import rounding


def test_rounded_to_bf16_on_the_bits_is_the_convert_pair():
  """The bit-level rounding equals bf16's round-to-nearest-even, ties included."""
  rng = np.random.default_rng(11)
  y = rng.normal(size=4096).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 4096)
  ties = ((np.arange(512, dtype=np.uint32) + 0x3F00) << 16 | np.uint32(0x8000)).view(np.float32)
  y = jnp.asarray(np.concatenate([y, ties, -ties, [0.0, -0.0]]).astype(np.float32))
  for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
    got = jax.jit(rounding.rounded_to, static_argnums=1)(y, dtype)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(y.astype(dtype).astype(jnp.float32)))

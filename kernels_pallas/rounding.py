"""Rounding to a narrower float on the bits, which no compiler may remove.

Kernels whose outputs must equal a model's stored (narrower) values round inside the kernel,
and their XLA twins round the same way: a narrowing/widening convert pair would do it, but
compilers allowed excess precision drop such pairs (XLA on the GPU does,
`xla_allow_excess_precision`), so the bf16 rounding is integer arithmetic on the bits. Used by
the mixed GEMM's epilogue and bias, the selective scan's direction mean (its epilogue) and
act_quant's producers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rounded_to(y, dtype):
  """y (any float dtype) rounded to dtype, as fp32: what storing y in dtype and reading it back
  gives. For bf16 the rounding (to nearest, ties to even) is done on the bits, because a
  narrowing/widening convert pair is dropped by compilers allowed excess precision: XLA on the
  GPU (`xla_allow_excess_precision`, on by default) removed the pair that rounded the bias
  before the kernel, which put 29 % of a dt_proj output 1 ulp off the separate add (H200,
  2026-12-04). Finite values only (a NaN may come back as an infinity)."""
  dtype = jnp.dtype(dtype)
  y = y.astype(jnp.float32)
  if dtype == jnp.float32:
    return y
  if dtype != jnp.bfloat16:
    return y.astype(dtype).astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(y, jnp.uint32)
  bits = bits + (jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1)))
  return jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFF0000), jnp.float32)

"""Weight quantizer: symmetric, per output channel, narrow grid ±(2^(b-1) - 1); stored layout.

Kernels are (in, out) as in the Flax Linear, so "per output channel" is per column and the
step sizes have shape (out,). The step comes from the lp(2.4) clipping search
(`search.search_symmetric_scale` over the input axis) or plain min-max for RTN.

Frozen codes are stored K-major, (out, in), the layout the mixed GEMM reads without a per-call
transpose (`to_kernel_layout`). int4 codes are packed by `kernels_pallas.int4` along the input
axis in halves (byte[o, j] holds q[j, o] in the low nibble and q[j + ceil(in/2), o] in the high
one; an odd input size pads the high half with a zero), stored as uint8 of shape
(out, ceil(in/2)), the dtype quantized checkpoints on disk hold.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas import int4
from kernels_pallas.act_quant.config import MIN_SCALE
from ouromamba_jax.quant import search
from ouromamba_jax.quant.activations import clip_ste, round_ste
from ouromamba_jax.quant.config import WeightSpec, weight_qmax

MIN_SMOOTH = 1e-5  # floor of the PTQ4VM smoothing factors (x / s, W * s), learned like steps


def init_weight_scale(w, spec: WeightSpec):
  """Per-output-channel step (out,) for a kernel w (in, out)."""
  scale = search.search_symmetric_scale(w, spec.qmax, reduce_axes=(0,), lp=spec.lp,
                                        n_grid=spec.n_grid, init=spec.init)
  return scale.reshape(-1)


def weight_codes(w, scale, bits: int, *, ste: bool = False):
  """clip(round(w / s), ±qmax) as float (straight-through rounding when `ste`)."""
  qmax = weight_qmax(bits)
  rnd = round_ste if ste else jnp.round
  scale = jnp.maximum(scale.astype(jnp.float32), MIN_SCALE)  # a learned step may cross 0
  return rnd(clip_ste(w.astype(jnp.float32) / scale[None, :], -qmax, qmax))


def code_dtype(bits: int):
  """Storage of unpacked weight codes: int8 up to 8 bits, int16 above."""
  return jnp.int8 if bits <= 8 else jnp.int16


def quantize_weight_int(w, scale, bits: int):
  """Integer codes (in, out) of a kernel, values within ±(2^(bits-1) - 1) (see `code_dtype`)."""
  return weight_codes(w, scale, bits).astype(code_dtype(bits))


def to_kernel_layout(codes, packed: bool):
  """Integer codes (in, out) -> the stored values, K-major (out, in) as the integer GEMM reads
  them (no per-call transpose): int4 codes packed two per byte in halves along `in`, uint8
  (out, ceil(in/2)) (`kernels_pallas.int4`), others the codes transposed."""
  q = jnp.asarray(codes)
  if q.ndim != 2:
    raise ValueError(f'to_kernel_layout expects 2-D (in, out) codes, got shape {q.shape}.')
  if not packed:
    return q.T
  return jax.lax.bitcast_convert_type(int4.pack_int4(q.T, axis=-1), jnp.uint8)


def codes_from_kernel_layout(values, in_features: int, packed: bool):
  """Inverse of `to_kernel_layout`: the codes (..., in, out), int4 ones sign-extended to int8
  (leading axes: stacked kernels)."""
  if packed:
    values = int4.unpack_int4(values, axis=-1, length=in_features)
  return jnp.swapaxes(values, -1, -2)

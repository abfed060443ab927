"""The real-integer Linear: a `QuantizedWeight` in mode 'int' runs the Pallas kernels' public APIs.

    x --(1/smooth)--> kernels_pallas.act_quant   -> inlier codes (int8, one per byte), per-step
                                                    S_I(t), int8 outlier codes, per-token s_o
                  --> kernels_pallas.mixed_gemm  -> w_s[o] * (S_I[t] * xin @ W + s_o[b, t] * xout @ W)

`implementation` ('xla' | 'triton' | None) picks the implementation of both kernels: 'xla' is
their XLA reference (`act_quant.reference.act_quant_xla`, the canonical integer quantizer, plus
integer dots), 'triton' the Pallas Triton kernels (run by the Pallas interpreter off-GPU), None
the platform default (Triton on GPU, XLA elsewhere; act_quant keeps int outliers with
trigger='batch' on XLA, where its Triton kernel is slower: `act_quant.api.DISPATCH`). It comes
from one setting, the model field `VisionMamba.quant_implementation`, handed down through `layers.Linear`.

Coverage (anything else runs the original XLA integer dots of `qtypes.quantized_linear`):
  * symmetric input grids with bits <= 8 (asymmetric per-token inputs, PTQ4VM, are not covered);
  * weight bits <= 8 (int4 packed codes, or int8);
  * outliers 'int' (outlier_bits <= 8), 'none', or 'float' (O16: the mixed GEMM does the inlier
    product, a float dot adds the outliers before the weight scale, exactly as the simulation).
Within `implementation='triton'`, the act-quant step falls back to its XLA reference for the
specs its kernel does not cover (float outliers, trigger 'official', C > 8192).

Every product is the simulation's (`quantized_linear(..., mode='fake')`): the same codes, exact
integer sums, and the same fp32 epilogue order (a_scale * acc_in + o_scale * acc_out, then
* w_scale), so the XLA implementation reproduces the fake-quant logits bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from kernels_pallas.act_quant import api as act_quant_api
from kernels_pallas.act_quant import producers
from kernels_pallas.act_quant.config import MIN_SCALE
from kernels_pallas.act_quant.reference import IntActivation
from kernels_pallas.mixed_gemm import api as mixed_gemm_api
from ouromamba_jax.models import layers
from ouromamba_jax.quant import activations as act_lib
from ouromamba_jax.quant import weights as w_lib

# One setting picks both kernels (they share their implementation names).
IMPLEMENTATIONS = mixed_gemm_api.IMPLEMENTATIONS


def unsupported_reason(weight, input_quantizer) -> Optional[str]:
  """Why the kernels cannot run this Linear (None when they can)."""
  if input_quantizer is None:
    return 'no input quantizer (weight-only quantization)'
  if input_quantizer.layout != 'steps':
    return f'input layout {input_quantizer.layout!r}'
  spec = input_quantizer.spec
  if not spec.symmetric:
    return 'asymmetric input grid (the mixed GEMM has no zero points)'
  if spec.bits > 8:
    return f'input bits {spec.bits} > 8'
  if spec.outliers == 'int' and spec.outlier_bits > 8:
    return f'outlier bits {spec.outlier_bits} > 8'
  if weight.bits > 8:
    return f'weight bits {weight.bits} > 8'
  return None


class KernelOperands(NamedTuple):
  """What the mixed GEMM receives for one Linear (tokens = (B, L) of the quantized input)."""
  activation: IntActivation  # act_quant's output
  x_inlier: jax.Array                # (B, L, K) int8 codes (of <= 8 bits)
  a_scale: jax.Array                 # (L,) the quantizer's S_I(t) as stored (the GEMM floors it)
  x_outlier: Optional[jax.Array]     # (B, L, K) int8 (outliers 'int'), else None
  o_scale: Optional[jax.Array]       # (B, L) (outliers 'int'), else None
  w: jax.Array                       # K-major: (N, K/2) packed int4 or (N, K) int8
  w_scale: jax.Array                 # (N,)
  weight_bits: int                   # 4 | 8 (the mixed GEMM's operand formats)


def _pad_last(a, new_len):
  pad = new_len - a.shape[-1]
  return a if pad == 0 else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])


def quantize_site(x3, quantizer, implementation: Optional[str] = None) -> IntActivation:
  """act_quant of x3 (B, L, C) with an `ActQuantizer`'s steps (same codes either way): None
  takes act_quant's platform default, 'triton' the Pallas kernel where it covers the spec and
  the XLA form elsewhere. Used for Linear inputs and log-domain sites (Δ, B and C in int mode
  go through `dequantized_site`); the outlier mask is left out (the codes are what the
  GEMM reads)."""
  return act_quant_api.act_quant(x3, quantizer.inlier_scale, quantizer.spec.kernel_params,
                                 quantizer.zero_point, outlier_mask=False,
                                 implementation=act_quant_api.with_xla_fallback(implementation))


def dequantized_site(x3, quantizer, implementation: Optional[str] = None, out_dtype=None):
  """dequantize(quantize_site(x3)) in out_dtype, one pass where the act_quant kernel runs (the
  codes of a site whose consumer is float, Δ/B/C before the scan, never reach memory)."""
  return act_quant_api.act_quant_dequantized(
      x3, quantizer.inlier_scale, quantizer.spec.kernel_params, quantizer.zero_point,
      out_dtype=out_dtype, implementation=act_quant_api.with_xla_fallback(implementation))


def prepare_operands(x3, weight, input_quantizer, implementation: Optional[str] = None,
                     activation: Optional[IntActivation] = None) -> KernelOperands:
  """Quantizes x3 (B, L, C) (already divided by the smoothing vector) with act_quant, unless
  its codes are given (`activation`), and lays out the weight for mixed_gemm. Needs
  `unsupported_reason(weight, input_quantizer) is None`."""
  spec = input_quantizer.spec
  weight_bits = 4 if weight.packed else 8
  k = weight.values.shape[-1] * (2 if weight.packed else 1)  # K (in_features, padded when odd)
  # Inlier codes travel one per byte, int4 ones too: the Triton GEMM multiplies int8 codes, so
  # packing here would only be unpacked there.
  q = activation if activation is not None else quantize_site(x3, input_quantizer,
                                                                implementation)
  x_inlier = _pad_last(q.inlier_q.astype(jnp.int8), k)
  # The steps as stored, per time step: the GEMM reads row (b, t)'s at t and floors it at
  # MIN_SCALE itself, so no clamp and no (B, L) broadcast runs as a launch of its own per call.
  a_scale = input_quantizer.inlier_scale
  x_outlier = o_scale = None
  if spec.outliers == 'int':
    x_outlier, o_scale = _pad_last(q.outlier_q, k), q.outlier_scale
  w = weight.values
  if not weight.packed:
    w = w.astype(jnp.int8)  # codes of <= 8-bit weights are int8 already
  # No clamp here: `freeze` stored the scale clamped (one XLA launch per Linear and call less;
  # 0.15 ms of a 6.5 ms Vim-B batch-1 forward, H200).
  w_scale = weight.scale.astype(jnp.float32)
  return KernelOperands(q, x_inlier, a_scale, x_outlier, o_scale, w, w_scale, weight_bits)


def input_segment(weight, input_quantizer, width: int):
  """act_quant's site for this Linear's input (`act_quant_segments`), where the integer
  kernels read its codes as act_quant makes them (no smoothing), else None."""
  if (weight.mode != 'int' or weight.smooth is not None
      or unsupported_reason(weight, input_quantizer) is not None):
    return None
  return act_quant_api.SegmentSite(width, input_quantizer.inlier_scale,
                                   input_quantizer.spec.kernel_params, input_quantizer.zero_point)


def linear(weight, x, input_quantizer, dtype, implementation: Optional[str] = None, bias=None):
  """y = x @ W (+ bias, added in dtype) of a `QuantizedWeight` on the integer kernels;
  x (..., in) or a producer (B, L, in) (`act_quant.producers`) -> (..., out) dtype. The bias
  is the GEMM's epilogue (same bits as adding it after: `mixed_gemm`), not one more pass over
  the output.

  Needs `unsupported_reason(weight, input_quantizer) is None` (`QuantizedWeight.linear` sends
  the other Linears to the XLA integer dots of `qtypes.quantized_linear`)."""
  reason = unsupported_reason(weight, input_quantizer)
  if reason is not None:
    raise ValueError(f'the integer kernels cannot run this Linear: {reason}.')
  activation = None
  if isinstance(x, producers.Quantized):  # codes made by a neighbour's launch (no smoothing)
    activation, x = (x.activation, x.value) if weight.smooth is None else (None, x.value)
  if weight.smooth is not None:
    x = producers.materialize(x).astype(jnp.float32) / jnp.maximum(weight.smooth,
                                                                    w_lib.MIN_SMOOTH)
  # Otherwise x stays in its own dtype: act_quant reads it and widens to fp32 in registers (the
  # same values the fake path's cast gives), instead of a separate fp32 copy in memory; and a
  # producer (B, L, C) stays one, so act_quant forms x from its operands.
  x3 = x if producers.is_produced(x) else act_lib.as_steps(x, 'steps')[0]
  ops = prepare_operands(x3, weight, input_quantizer, implementation, activation)
  float_outliers = input_quantizer.spec.outliers == 'float'
  gemm_kw = dict(weight_bits=ops.weight_bits, a_floor=MIN_SCALE, implementation=implementation)
  if not float_outliers:
    y = mixed_gemm_api.mixed_gemm(ops.x_inlier, ops.a_scale, ops.w, ops.w_scale, ops.x_outlier,
                                  ops.o_scale, bias, out_dtype=dtype, **gemm_kw)
  else:
    # O16: S_I * (xin @ W) from the GEMM (unit weight scale, fp32: exact), + float outliers.
    ones = jnp.ones_like(ops.w_scale)
    y = mixed_gemm_api.mixed_gemm(ops.x_inlier, ops.a_scale, ops.w, ones, out_dtype=jnp.float32,
                                  **gemm_kw)
    w_f = weight.codes().astype(jnp.float32)
    y = y + jnp.einsum('...i,io->...o', ops.activation.outlier_q, w_f,
                       precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    y = layers.with_bias((y * ops.w_scale).astype(dtype), bias)
  return y.reshape(x.shape[:-1] + (ops.w_scale.shape[0],))

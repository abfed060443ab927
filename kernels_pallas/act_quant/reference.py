"""XLA twin of the activation-quantization kernel: the canonical integer quantizer itself.

`ouromamba_jax.quant.activations.quantize_activation_int` defines OuroMamba-Quant's activation
quantizer (per-step static inlier scale, dynamic outlier channels, refresh windows); the Pallas
kernel must reproduce it code for code. This module only adds the optional int4 packing of the
inlier codes (two per byte along C, low nibble = even channel: the mixed GEMM's format).
"""
from __future__ import annotations

from kernels_pallas.mixed_gemm.reference import pack_int4
from ouromamba_jax.quant.activations import IntActivation, quantize_activation_int
from ouromamba_jax.quant.config import ActSpec


def act_quant_xla(x, inlier_scale, spec: ActSpec, zero_point=None, *,
                  pack: bool = False) -> IntActivation:
  """The canonical integer form; with `pack`, inlier_q becomes (B, L, C/2) packed int4."""
  q = quantize_activation_int(x, inlier_scale, spec, zero_point)
  if pack:
    q = q._replace(inlier_q=pack_int4(q.inlier_q, axis=-1))
  return q

"""B and C quantized inside the selective scan (OuroMamba's per-time-step quantizer of the SSM's
input matrices, dequantized in registers): what the scan needs to apply it, and its XLA form.

In a quantized Vim, B and C (B, L, N) pass through act_quant before the scan: one extra,
latency-bound launch per block (N = 16 channels per step, a serial walk over each refresh
window) whose only consumer is the scan. The scan's programs already load every step's B_t and
C_t rows in time order, so each program can run the quantizer's recurrence on them itself
(the outlier set is a carry of N lanes): the same codes, no separate pass. A program owns one
(sample, channel block); the N-lane work is repeated per channel block, which is cheap next to
the (N, block_d) state update it feeds.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax

from kernels_pallas.act_quant import api as act_quant_api
from kernels_pallas.act_quant.config import ActQuantParams


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=['b_scale', 'c_scale', 'b_zero', 'c_zero'], meta_fields=['params'])
@dataclasses.dataclass(frozen=True)
class StateQuant:
  """One quantizer spec for B and C (`params`), each with its own static per-step steps (L,)
  and, on an asymmetric grid, zero points (L,). The dequantized values are rounded to B's and
  C's own dtype, as the separate act_quant pass writes them."""
  params: ActQuantParams
  b_scale: jax.Array
  c_scale: jax.Array
  b_zero: Optional[jax.Array] = None
  c_zero: Optional[jax.Array] = None

  def unsupported_reason(self) -> Optional[str]:
    """Why the scan kernel cannot apply it (None: it can)."""
    p = self.params
    if p.outliers == 'float':
      return "outliers='float' keeps outliers unquantized (no integer codes to dequantize)"
    if p.outliers == 'int' and p.trigger != 'sample':
      return (f"trigger={p.trigger!r} couples the samples of a step; a scan program sees one "
              'sample')
    if (self.b_zero is None) != p.symmetric or (self.c_zero is None) != p.symmetric:
      return 'zero points must be given exactly for an asymmetric grid'
    return None

  def check(self, length: int) -> None:
    reason = self.unsupported_reason()
    if reason:
      raise ValueError(f'selective_scan: state_quant not supported: {reason}.')
    for name in ('b_scale', 'c_scale', 'b_zero', 'c_zero'):
      v = getattr(self, name)
      if v is not None and v.shape != (length,):
        raise ValueError(f'selective_scan: state_quant.{name} must have shape ({length},) (one '
                         f'static value per time step), got {v.shape}; recalibrate for this '
                         'sequence length.')

  def dequantized(self, B, C, implementation: Optional[str] = None):
    """(B, C) quantized and dequantized by act_quant in their own dtype: the separate pass
    whose values the kernel reproduces (also the XLA implementations' form)."""
    one = lambda x, s, z: act_quant_api.act_quant_dequantized(
        x, s, self.params, z, out_dtype=x.dtype, implementation=implementation)
    return one(B, self.b_scale, self.b_zero), one(C, self.c_scale, self.c_zero)

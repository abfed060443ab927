"""Launch settings of the patched-readout kernels, validated up front.

One program owns one image, a block of `block_d` state channels and one patch-grid row; its
tiles are (grid width padded to >= 16, N·block_d) fp32, so block_d sets the registers a
program needs (Vim-S, N = 16: 16 × 512 floats per tile at block_d = 32, 64 per thread at 4 warps).
"""
from __future__ import annotations

import dataclasses

from kernels_pallas._blocks import is_pow2

_VALID_WARPS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class PatchedReadoutBlockConfig:
  """block_d: channels per program (power of two, 16..128); num_warps: warps per program."""
  block_d: int = 32
  num_warps: int = 4

  def __post_init__(self):
    bd = self.block_d
    if not isinstance(bd, int) or not is_pow2(bd) or not 16 <= bd <= 128:
      raise ValueError(f'PatchedReadoutBlockConfig.block_d={self.block_d!r}: must be a power of '
                       'two in [16, 128].')
    if self.num_warps not in _VALID_WARPS:
      raise ValueError(f'PatchedReadoutBlockConfig.num_warps={self.num_warps!r}: choose one of '
                       f'{_VALID_WARPS}.')

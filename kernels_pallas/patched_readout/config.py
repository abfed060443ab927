"""Launch settings of the patched-readout kernels, validated up front.

One program owns one image and a block of `block_d` state channels and walks the patch grid;
per patch it holds a (block_d, N) tile of states in registers.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas._blocks import is_pow2

_VALID_WARPS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class PatchedReadoutBlockConfig:
  """block_d: channels per program (power of two, 16..256); num_warps: warps per program."""
  block_d: int = 64
  num_warps: int = 4

  def __post_init__(self):
    bd = self.block_d
    if not isinstance(bd, int) or not is_pow2(bd) or not 16 <= bd <= 256:
      raise ValueError(f'PatchedReadoutBlockConfig.block_d={self.block_d!r}: must be a power of '
                       'two in [16, 256].')
    if self.num_warps not in _VALID_WARPS:
      raise ValueError(f'PatchedReadoutBlockConfig.num_warps={self.num_warps!r}: choose one of '
                       f'{_VALID_WARPS}.')

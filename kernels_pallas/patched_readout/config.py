"""Launch settings of the patched-readout kernels, validated up front.

One program owns one image, a block of `block_d` state channels and a chunk of `patch_chunk`
consecutive patches; per patch it holds a (block_d, N) tile of states in registers. Chunking the
patch grid multiplies the programs (Vim-S, 32 images: 384 without it, ~5000 with 16 patches a
program), because one program per (image, channel block) left the H100 too few warps to hide
the latency of its window loads.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas._blocks import is_pow2

_VALID_WARPS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class PatchedReadoutBlockConfig:
  """block_d: channels per program (power of two, 16..256); num_warps: warps per program;
  patch_chunk: patches per program (>= 1; the last chunk of the grid is masked)."""
  block_d: int = 64
  num_warps: int = 4
  patch_chunk: int = 16

  def __post_init__(self):
    bd = self.block_d
    if not isinstance(bd, int) or not is_pow2(bd) or not 16 <= bd <= 256:
      raise ValueError(f'PatchedReadoutBlockConfig.block_d={self.block_d!r}: must be a power of '
                       'two in [16, 256].')
    if self.num_warps not in _VALID_WARPS:
      raise ValueError(f'PatchedReadoutBlockConfig.num_warps={self.num_warps!r}: choose one of '
                       f'{_VALID_WARPS}.')
    pc = self.patch_chunk
    if not isinstance(pc, int) or isinstance(pc, bool) or pc < 1:
      raise ValueError(f'PatchedReadoutBlockConfig.patch_chunk={pc!r}: must be an int >= 1 '
                       '(patches per program).')

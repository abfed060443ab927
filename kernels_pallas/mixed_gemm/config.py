"""Block sizes of the mixed-precision GEMM kernel, validated up front.

Triton tiles must be powers of two; the int8 tensor-core MMA needs a reduction of at least 32,
and with int4 weights the kernel splits each K block into its even and odd halves (one dot
each), so block_k >= 64.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas._blocks import is_pow2, next_pow2

_VALID_WARPS = (1, 2, 4, 8, 16)


@dataclasses.dataclass(frozen=True)
class MixedGemmBlockConfig:
  """One program's tile: block_m tokens x block_n output channels, K walked in block_k steps."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 128
  num_warps: int = 8
  num_stages: int = 3

  def __post_init__(self):
    for name in ('block_m', 'block_n', 'block_k'):
      value = getattr(self, name)
      if not isinstance(value, int) or not is_pow2(value) or value < 16:
        raise ValueError(f'MixedGemmBlockConfig.{name}={value!r}: must be a power of two >= 16 '
                         '(Triton tiles are powers of two; the MMA needs 16 rows/cols).')
    if self.block_k < 64:
      raise ValueError(f'MixedGemmBlockConfig.block_k={self.block_k}: must be >= 64 (int8 MMA '
                       'needs K >= 32 per dot, and int4 operands are split into two K/2 halves).')
    if self.num_warps not in _VALID_WARPS:
      raise ValueError(f'MixedGemmBlockConfig.num_warps={self.num_warps}: choose one of '
                       f'{_VALID_WARPS}.')
    if not isinstance(self.num_stages, int) or self.num_stages < 1:
      raise ValueError(f'MixedGemmBlockConfig.num_stages={self.num_stages!r}: must be an int >= 1.')


def default_block_config(m: int, n: int, k: int) -> MixedGemmBlockConfig:
  """A reasonable tile for (M, N, K): large tiles for Vim-sized problems, shrunk for tiny ones.

  block_k is the largest of 256/128/64 that divides K (so no K padding at Vim shapes:
  K = 192, 384, 768, 1536); a K that none divides is zero-padded to a multiple of 64.
  """
  block_k = next((bk for bk in (256, 128, 64) if k % bk == 0), 64)
  block_m = min(128, max(16, next_pow2(m)))
  block_n = min(128, max(16, next_pow2(n)))
  num_warps = 8 if block_m * block_n >= 128 * 128 else 4
  return MixedGemmBlockConfig(block_m=block_m, block_n=block_n, block_k=block_k,
                              num_warps=num_warps, num_stages=3)

"""Block-size arithmetic every kernel config shares: Triton tiles are powers of two."""
from __future__ import annotations


def is_pow2(v: int) -> bool:
  return v > 0 and (v & (v - 1)) == 0


def next_pow2(v: int) -> int:
  """The smallest power of two >= v (1 for v <= 1)."""
  return 1 if v <= 1 else 1 << (v - 1).bit_length()


def prev_pow2(v: int) -> int:
  """Largest power of two <= v (1 for v <= 1)."""
  return 1 << (max(1, int(v)).bit_length() - 1)

"""Which blocks feed Gen's state losses on a model whose small grids may not fit them (VMamba's
late stages, MambaVision's small windows): gen.loss_blocks, checked, or every block that fits.

One procedure for the families (`gen.ss2d`, `gen.windows`); each brings its own block count,
fit test and messages, which name its own indices and grids.
"""
from __future__ import annotations

from typing import Callable, Sequence


def choose_loss_blocks(chosen: Sequence[int], count: int, fits: Callable[[int], bool], *,
                       out_of_range: Callable[[list[int]], str],
                       too_small: Callable[[list[int]], str],
                       none_fits: Callable[[], str]) -> tuple[int, ...]:
  """`chosen` (gen.loss_blocks) when every index is in [0, count) and fits, else a ValueError
  with `out_of_range(bad)` / `too_small(small)`; with nothing chosen, every block that fits,
  or a ValueError with `none_fits()` when none does."""
  if chosen:
    bad = [b for b in chosen if not 0 <= b < count]
    if bad:
      raise ValueError(out_of_range(bad))
    small = [b for b in chosen if not fits(b)]
    if small:
      raise ValueError(too_small(small))
    return tuple(chosen)
  blocks = tuple(b for b in range(count) if fits(b))
  if not blocks:
    raise ValueError(none_fits())
  return blocks

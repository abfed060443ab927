"""Progress lines of long runs: where they go and what they say about time.

`Log` is the line sink that stages and the calibration loop take (tests pass `list.append`);
`log_info` is the default, absl INFO with the line passed as an argument, so a '%' in it is
printed as is. `Throughput` and `format_seconds` give the rate and the ETA of those lines.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from absl import logging

Log = Callable[[str], None]


def log_info(line: str) -> None:
  logging.info('%s', line)


def format_seconds(seconds: float) -> str:
  """'1h02m03s', or '2m03s' under an hour (negative durations read as 0)."""
  seconds = int(round(max(seconds, 0)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Throughput:
  """Work per second and the time left, compilation left out: a process's first unit of work
  compiles (minutes on a CPU), so the rate is measured from its end."""

  def __init__(self, total: float, done: float = 0, clock: Callable[[], float] = time.perf_counter):
    self.total, self.done, self.clock = total, done, clock
    self.steady_from: Optional[tuple[float, float]] = None   # (time, done) after the first unit

  @property
  def started(self) -> bool:
    """Whether the first (compiling) unit has been done."""
    return self.steady_from is not None

  def restore(self, amount: float) -> None:
    """Work restored from a checkpoint is done but not timed: the ETA counts only what is
    left, and the rate only what this process did."""
    self.done += amount
    if self.steady_from is not None:
      self.steady_from = (self.steady_from[0], self.steady_from[1] + amount)

  def advance(self, amount: float) -> None:
    self.done += amount
    if self.steady_from is None:
      self.steady_from = (self.clock(), self.done)

  def rate(self) -> float:
    """Units per second since the first unit ended (0 until that can be told)."""
    if self.steady_from is None:
      return 0.0
    elapsed = self.clock() - self.steady_from[0]
    return (self.done - self.steady_from[1]) / elapsed if elapsed > 0 else 0.0

  def seconds_left(self) -> Optional[float]:
    """The remaining work at the current rate, or None while there is no rate yet."""
    rate = self.rate()
    return (self.total - self.done) / rate if rate > 0 else None

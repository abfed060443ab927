"""kernels_pallas._blocks (tile arithmetic) and _bench.n_copies (rotating input sets)."""
import pytest

from kernels_pallas import _bench
from kernels_pallas._blocks import is_pow2, next_pow2


@pytest.mark.parametrize('v, want', [(1, True), (2, True), (64, True), (0, False), (-4, False),
                                     (3, False), (96, False)])
def test_is_pow2(v, want):
  assert is_pow2(v) is want


@pytest.mark.parametrize('v, want', [(-3, 1), (0, 1), (1, 1), (2, 2), (3, 4), (64, 64), (65, 128)])
def test_next_pow2(v, want):
  assert next_pow2(v) == want


def test_n_copies_spills_l2_and_is_bounded():
  assert _bench.n_copies(1 << 20, smoke=True) == 1
  big = _bench.L2_SPILL_BYTES
  assert _bench.n_copies(big, smoke=False) == 2               # at least two sets
  assert _bench.n_copies(big // 4, smoke=False) == 4          # together they exceed the spill size
  assert _bench.n_copies(1, smoke=False) == 16                # capped
  assert _bench.n_copies(1, smoke=False, most=5) == 5

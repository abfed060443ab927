"""kernels_pallas._blocks (tile arithmetic) and _bench (rotating input sets, chained timing)."""
import jax.numpy as jnp
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
  # at least MIN_CALLS_PER_DISPATCH sets: each is one call of a timed dispatch
  assert _bench.n_copies(big, smoke=False) == _bench.MIN_CALLS_PER_DISPATCH == 8
  assert _bench.n_copies(big // 10, smoke=False) == 10        # together they exceed the spill size
  assert _bench.n_copies(1, smoke=False) == 16                # capped
  assert _bench.n_copies(1, smoke=False, most=5) == 5


def test_chained_calls_fn_once_per_set_in_order_behind_barriers():
  sets = [(jnp.full((4,), float(i)),) for i in range(3)]
  program = _bench.chained(lambda x: x * 2 + 1)
  assert [float(out[0]) for out in program(sets)] == [1.0, 3.0, 5.0]
  # each call's inputs pass a barrier with the previous call's outputs: no merged calls
  assert program.lower(sets).as_text().count('optimization_barrier') == 3


def test_time_fn_is_seconds_per_call():
  seconds = _bench.time_fn(lambda x: x + 1, [(jnp.ones(8),)] * 2, warmup=1, trials=2, inner=2)
  assert 0 < seconds < 1

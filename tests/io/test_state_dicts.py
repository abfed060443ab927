"""The shared strict state_dict check and conversion (each family's tests cover its key table)."""
import numpy as np
import pytest

from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import state_dicts


def _table():
  return hustvl_keys.key_table({'head': {'kernel': np.zeros((3, 2), np.float32),
                                         'bias': np.zeros((2,), np.float32)}})


def test_every_problem_in_one_error_with_hints_and_advice():
  state_dict = {'head.weight': np.zeros((2, 4), np.float32), 'extra': np.zeros((1,), np.float32)}
  with pytest.raises(state_dicts.CheckpointMismatchError) as info:
    state_dicts.check_state_dict(state_dict, _table(), source='f.pth', model_name='M',
                                 names='test names', advice='Check the variant.',
                                 explain=lambda key: 'a foreign key' if key == 'extra' else '')
  message = str(info.value)
  assert message.startswith('f.pth does not match M: 1 missing, 1 unexpected, 1 mismatched')
  assert 'head.bias: expected shape (2,)' in message and 'extra: shape (1,) (a foreign key)' in message
  assert 'head.weight: checkpoint (2, 4), model expects (2, 3)' in message
  assert message.endswith('Check the variant.')
  assert info.value.missing == ['head.bias'] and info.value.unexpected == ['extra']


def test_round_trip_through_the_torch_layout():
  table = _table()
  params = {'head': {'kernel': np.arange(6, dtype=np.float32).reshape(3, 2),
                     'bias': np.ones((2,), np.float32)}}
  state_dict = state_dicts.state_dict_from(params, table)
  assert state_dict['head.weight'].shape == (2, 3)
  back = state_dicts.params_from_checked(state_dict, table, source='x')
  np.testing.assert_array_equal(np.asarray(back['head']['kernel']), params['head']['kernel'])


def test_layouts_invert_and_match_torch_semantics():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((5, 3))  # torch Linear (out=5, in=3): y = x @ w.T
  x = rng.standard_normal(3)
  np.testing.assert_allclose(x @ state_dicts.LINEAR.to_flax(w), w @ x)
  for layout, torch_shape in ((state_dicts.LINEAR, (5, 3)), (state_dicts.CONV1D, (6, 1, 4)),
                              (state_dicts.CONV2D, (8, 3, 2, 2)), (state_dicts.AS_IS, (7,))):
    a = rng.standard_normal(torch_shape)
    flax = layout.to_flax(a)
    assert layout.hustvl_shape(flax.shape) == torch_shape
    np.testing.assert_array_equal(layout.to_hustvl(flax), a)
  conv = rng.standard_normal((6, 1, 4))  # (Di, 1, K) -> (K, Di)
  np.testing.assert_array_equal(state_dicts.CONV1D.to_flax(conv)[2, 5], conv[5, 0, 2])

"""integrity: counting non-finite values (bf16 and integer codes too) and the one-line errors."""
import ml_dtypes
import numpy as np
import pytest

from ouromamba_jax.io import integrity


def test_counts_nan_and_inf_in_float_and_bf16_and_ignores_integers():
  assert integrity.count_nonfinite(np.array([1.0, np.nan, -np.inf], np.float32)) == 2
  assert integrity.count_nonfinite(np.array([np.nan, 2.0]).astype(ml_dtypes.bfloat16)) == 1
  assert integrity.count_nonfinite(np.arange(4, dtype=np.int8)) == 0


def test_check_finite_names_the_first_bad_tensor_in_one_line():
  named = [('a', np.ones(3)), ('b', np.array([np.inf, 1.0])), ('c', np.array([np.nan]))]
  with pytest.raises(integrity.NonFiniteError,
                     match=r'^f\.bin: tensor b holds 1 NaN/Inf value\(s\) of 2; redo it\.$'):
    integrity.check_finite(named, 'f.bin', 'redo it.')
  integrity.check_finite(named[:1], 'f.bin', 'redo it.')


def test_damaged_flattens_the_parser_message_to_one_line():
  error = integrity.damaged('x.json', 'JSON file', ValueError('bad\n  thing'), 'delete it.')
  assert str(error) == ('x.json is not a readable JSON file (ValueError: bad thing); it is '
                        'truncated or corrupt: delete it.')

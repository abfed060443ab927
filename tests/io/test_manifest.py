"""manifest: per-array CRC-32s and the one-line error naming the first damaged array."""
import ml_dtypes
import numpy as np
import pytest

from ouromamba_jax.io import integrity
from ouromamba_jax.io import manifest


def _arrays():
  return {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.uint8(7),
          'c': np.ones(4, ml_dtypes.bfloat16)}


def test_a_manifest_verifies_its_own_arrays():
  arrays = _arrays()
  expected = manifest.manifest(arrays.items())
  assert expected['a'] == {'crc32': manifest.crc32(arrays['a']), 'shape': [2, 3],
                           'dtype': 'float32'}
  manifest.verify(arrays, expected, 'f', 'redo it.')


@pytest.mark.parametrize('edit,message', [
    (lambda d: d.__setitem__('a', d['a'] + np.float32(1e-3)),
     r'array a fails its checksum \(crc32 [0-9a-f]{8}, manifest [0-9a-f]{8}\)'),
    (lambda d: d.__setitem__('a', d['a'][:1]), r'array a is float32\[1, 3\], the manifest says '
                                               r'float32\[2, 3\]'),
    (lambda d: d.pop('c'), 'array c is missing'),
    (lambda d: d.__setitem__('z', np.zeros(1)), 'array z is not in the manifest'),
])
def test_a_damaged_array_is_named_in_one_line(edit, message):
  arrays = _arrays()
  expected = manifest.manifest(arrays.items())
  edit(arrays)
  with pytest.raises(integrity.DamagedFileError,
                     match=rf'^ck: {message}; the file is damaged: redo it\.$'):
    manifest.verify(arrays, expected, 'ck', 'redo it.')

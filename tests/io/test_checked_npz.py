"""checked_npz: an npz with its own manifest; damage is named, older files load unchecked."""
import numpy as np
import pytest

from ouromamba_jax.io import atomic
from ouromamba_jax.io import checked_npz
from ouromamba_jax.io import integrity


def _arrays():
  return {'images': np.arange(24, dtype=np.float32).reshape(2, 3, 4), 'group': np.int32(3)}


def test_round_trip_and_files_without_a_manifest(tmp_path):
  path = str(tmp_path / 'g.npz')
  checked_npz.write(path, _arrays())
  got = checked_npz.read(path, 'group file', 'redo it.')
  assert sorted(got) == ['group', 'images']
  np.testing.assert_array_equal(got['images'], _arrays()['images'])
  atomic.write_npz(str(tmp_path / 'old.npz'), **_arrays())      # written before manifests
  assert sorted(checked_npz.read(str(tmp_path / 'old.npz'), 'group file', '')) == ['group',
                                                                                   'images']


def test_a_flipped_byte_is_named(tmp_path):
  path = tmp_path / 'g.npz'
  checked_npz.write(str(path), _arrays())
  data = bytearray(path.read_bytes())
  data[data.index(np.float32(5).tobytes())] ^= 0x01      # inside the stored images
  path.write_bytes(bytes(data))
  with pytest.raises(integrity.DamagedFileError,
                     match=r'g\.npz is not a readable group file \(BadZipFile: Bad CRC-32'):
    checked_npz.read(str(path), 'group file', 'redo it.')


def test_an_array_rewritten_whole_is_named(tmp_path):
  path = str(tmp_path / 'g.npz')
  checked_npz.write(path, _arrays())
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays['images'] = arrays['images'] + 1                # a consistent zip, other values
  atomic.write_npz(path, **arrays)
  with pytest.raises(integrity.DamagedFileError,
                     match=r'g\.npz: array images fails its checksum .*; the file is damaged: '
                           r'redo it\.$'):
    checked_npz.read(path, 'group file', 'redo it.')


def test_a_truncated_file_is_named(tmp_path):
  path = tmp_path / 'g.npz'
  checked_npz.write(str(path), _arrays())
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(integrity.DamagedFileError, match=r'g\.npz is not a readable group file'):
    checked_npz.read(str(path), 'group file', 'redo it.')


def test_the_manifest_key_is_reserved(tmp_path):
  with pytest.raises(ValueError, match='reserved'):
    checked_npz.write(str(tmp_path / 'g.npz'), {checked_npz.MANIFEST_KEY: np.zeros(1)})

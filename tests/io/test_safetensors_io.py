"""safetensors read/write: dtypes (bf16 included), metadata, atomic replacement, checksums."""
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from ouromamba_jax.io import integrity
from ouromamba_jax.io import safetensors_io


def test_round_trip_keeps_values_and_dtypes(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
      'f32': rng.standard_normal((3, 4)).astype(np.float32),
      'bf16': rng.standard_normal(5).astype(ml_dtypes.bfloat16),
      'f16': rng.standard_normal(2).astype(np.float16),
      'i64': np.arange(3),
      'transposed': rng.standard_normal((4, 2)).astype(np.float32).T,  # non-contiguous input
  }
  path = tmp_path / 'w.safetensors'
  safetensors_io.write_safetensors(tensors, path, metadata={'format': 'pt'})
  loaded = safetensors_io.read_safetensors(path)
  assert set(loaded) == set(tensors)
  for name, value in tensors.items():
    assert loaded[name].dtype == value.dtype, name
    np.testing.assert_array_equal(loaded[name], value)
  with safe_open(path, framework='numpy') as f:
    metadata = f.metadata()
  assert set(metadata) == {'format', safetensors_io.CRC_KEY} and metadata['format'] == 'pt'


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / 'w.safetensors'
  safetensors_io.write_safetensors({'a': np.ones(2, np.float32)}, path)

  def crash(tensors, filename, metadata=None):
    with open(filename, 'wb') as f:
      f.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(safetensors_io.safetensors_numpy, 'save_file', crash)
  with pytest.raises(OSError, match='disk full'):
    safetensors_io.write_safetensors({'a': np.zeros(2, np.float32)}, path)
  np.testing.assert_array_equal(safetensors_io.read_safetensors(path)['a'], np.ones(2))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['w.safetensors']


def test_bad_input_is_rejected(tmp_path):
  with pytest.raises(TypeError, match="tensor 'x' is not a numeric array"):
    safetensors_io.write_safetensors({'x': np.array([object()])}, tmp_path / 'x.safetensors')
  with pytest.raises(FileNotFoundError):
    safetensors_io.read_safetensors(tmp_path / 'absent.safetensors')


@pytest.mark.parametrize('keep', [4, 20, -3])   # inside the length, the header, the data
def test_truncated_file_is_reported_as_damaged_in_one_line(tmp_path, keep):
  path = tmp_path / 'w.safetensors'
  safetensors_io.write_safetensors({'a': np.ones(64, np.float32)}, path)
  data = path.read_bytes()
  path.write_bytes(data[:keep])
  with pytest.raises(integrity.DamagedFileError,
                     match=r'^.*w\.safetensors is not a readable \.safetensors file .*'
                           r'truncated or corrupt: download or export it again\.$') as info:
    safetensors_io.read_safetensors(path)
  assert '\n' not in str(info.value)


def test_a_flipped_byte_fails_the_tensors_checksum_in_one_line(tmp_path):
  path = tmp_path / 'w.safetensors'
  safetensors_io.write_safetensors({'a': np.ones(64, np.float32), 'b': np.zeros(8)}, path)
  data = bytearray(path.read_bytes())
  data[-8 * 8 - 10] ^= 0x01          # inside 'a', which sorts before 'b' in the payload
  path.write_bytes(bytes(data))
  with pytest.raises(integrity.DamagedFileError,
                     match=r'^.*w\.safetensors: array a fails its checksum \(crc32 \w+, manifest '
                           r'\w+\); the file is damaged: download or export it again\.$'):
    safetensors_io.read_safetensors(path)


def test_files_from_elsewhere_load_unchecked(tmp_path):
  path = str(tmp_path / 'w.safetensors')
  safetensors_io.safetensors_numpy.save_file({'a': np.ones(3, np.float32)}, path)
  np.testing.assert_array_equal(safetensors_io.read_safetensors(path)['a'], np.ones(3))


def test_a_nan_tensor_is_refused_on_write_and_nothing_is_written(tmp_path):
  with pytest.raises(integrity.NonFiniteError,
                     match=r'^.*w\.safetensors: tensor a holds 1 NaN/Inf value\(s\) of 2; refusing '
                           r'to save it'):
    safetensors_io.write_safetensors({'a': np.array([1.0, np.nan])}, tmp_path / 'w.safetensors')
  assert not list(tmp_path.iterdir())

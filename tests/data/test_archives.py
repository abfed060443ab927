"""archives: a junk or truncated dataset archive is refused in one line and leaves no cache."""
import io
import os
import tarfile

import numpy as np
import pytest

from ouromamba_jax.data import archives
from ouromamba_jax.data import cifar10
from ouromamba_jax.io import integrity

MESSAGE = (r'^.*test\.tar\.gz is not a readable tar archive \(\w+: .*\); it is truncated or '
           r'corrupt: replace it with a complete copy \(download it again\)\.$')


def _tar_gz(path, n_files=3):
  rng = np.random.default_rng(0)
  with tarfile.open(path, 'w:gz') as tar:
    for i in range(n_files):
      data = rng.bytes(50_000)   # incompressible: truncation lands inside a member
      info = tarfile.TarInfo(f'test/airplane/{i}.bin')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def test_extract_once_extracts_a_good_archive(tmp_path):
  archive = tmp_path / 'test.tar.gz'
  _tar_gz(archive)
  folder = archives.extract_once(str(archive), str(tmp_path / 'cache'))
  assert sorted(os.listdir(os.path.join(folder, 'test', 'airplane'))) == ['0.bin', '1.bin',
                                                                          '2.bin']


@pytest.mark.parametrize('damage', ['junk', 'truncated'])
def test_a_damaged_cifar10_archive_is_named_in_one_line(tmp_path, damage):
  archive = tmp_path / 'data' / 'test.tar.gz'
  archive.parent.mkdir()
  if damage == 'junk':
    archive.write_bytes(b'this is not an archive\n' * 10)
  else:
    _tar_gz(archive)
    archive.write_bytes(archive.read_bytes()[:70_000])
  cache = tmp_path / 'cache'
  with pytest.raises(integrity.DamagedFileError, match=MESSAGE):
    cifar10.load('test', str(archive.parent), str(cache), use_tfds=False)
  assert not os.listdir(cache)          # no half-extracted folder left behind

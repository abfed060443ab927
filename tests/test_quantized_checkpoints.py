"""Quantized checkpoints: atomic overwrite, the model they belong to, the preset recorded, and
the per-array checksums that catch a damaged array."""
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.io import integrity
from ouromamba_jax.models import build_model
from ouromamba_jax.quant import qtypes
from tests.quant.conftest import rtn_run, tiny  # pylint: disable=unused-import


def test_save_quantized_is_atomic_and_overwrites(tiny, rtn_run, tmp_path):
  qparams, report = rtn_run
  path = str(tmp_path / 'ckpt')
  quantized_checkpoints.save_quantized(path, qparams, tiny[0], {'n': 1})
  quantized_checkpoints.save_quantized(path, qparams, tiny[0], {'n': 2})
  _, loaded_report = quantized_checkpoints.load_quantized(path, tiny[0])
  assert loaded_report == {'n': 2}
  assert sorted(os.listdir(tmp_path)) == ['ckpt']      # no temporary folders left behind


def test_checkpoint_names_its_model_and_preset_and_refuses_another(tiny, rtn_run, tmp_path):
  qparams, report = rtn_run
  path = str(tmp_path / 'ckpt')
  quantized_checkpoints.save_quantized(path, qparams, tiny[0], report)
  with open(os.path.join(path, quantized_checkpoints.META_FILE)) as f:
    meta = json.load(f)
  assert meta['preset'] == 'w4a4' and meta['method'] == 'rtn'
  assert meta['model']['fields']['depth'] == 2 and meta['model']['name'] is None
  with pytest.raises(ValueError, match=r'quantized for an unregistered model \(.*depth=2.*'
                                       r'not for this model, vim_t_cifar10 \(.*depth=24'):
    quantized_checkpoints.load_quantized(path, build_model('vim_t_cifar10'))


def _with_inf(qparams):
  qparams = dict(qparams)
  qparams['norm_f'] = {'weight': qparams['norm_f']['weight'].at[2].set(float('inf'))}
  return qparams


def test_a_nan_array_is_refused_on_save_and_nothing_is_written(tiny, rtn_run, tmp_path):
  with pytest.raises(integrity.NonFiniteError,
                     match=r'^.*ckpt: tensor norm_f/weight holds 1 NaN/Inf value\(s\) of 32; '
                           r'refusing to save it'):
    quantized_checkpoints.save_quantized(str(tmp_path / 'ckpt'), _with_inf(rtn_run[0]), tiny[0])
  assert not os.listdir(tmp_path)


def test_a_nan_array_is_refused_on_load_naming_checkpoint_and_param(tiny, rtn_run, tmp_path,
                                                                    monkeypatch):
  path = str(tmp_path / 'ckpt')
  with monkeypatch.context() as m:   # a checkpoint from before the save-side check
    m.setattr(integrity, 'check_finite', lambda *a: None)
    quantized_checkpoints.save_quantized(path, _with_inf(rtn_run[0]), tiny[0])
  with pytest.raises(integrity.NonFiniteError,
                     match=r'^.*ckpt: tensor norm_f/weight holds 1 NaN/Inf value\(s\) of 32; the '
                           r'checkpoint is damaged: delete .*ckpt and quantize again\.$'):
    quantized_checkpoints.load_quantized(path, tiny[0])


def largest_array_file(checkpoint: str) -> str:
  """The largest array-data file: the store's data files live in `d/` folders. Its JSON
  metadata can outgrow a data file when orbax splits the data, and truncating JSON fails in
  another way than truncating data (the CI run of 003f807 picked `_METADATA`)."""
  files = [f for f in glob.glob(f'{checkpoint}/arrays/**/d/*', recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def damage(path: str, how: str) -> None:
  """'flip' one byte in the middle of `path` or 'truncate' it to half."""
  with open(path, 'rb') as f:
    data = f.read()
  i = len(data) // 2
  data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:] if how == 'flip' else data[:i]
  with open(path, 'wb') as f:
    f.write(data)


@pytest.mark.parametrize('how,message', [
    ('flip', r'ckpt: array \S+ fails its checksum \(crc32 \w+, manifest \w+\); the file is '
             r'damaged: delete .*ckpt and quantize again\.$'),
    ('truncate', r'ckpt/arrays is not a readable quantized-checkpoint array store \(ValueError: '
                 r'OUT_OF_RANGE.*\); it is truncated or corrupt: delete .*ckpt and quantize '
                 r'again\.$'),
])
def test_a_damaged_array_is_named_in_one_line(tiny, rtn_run, tmp_path, how, message):
  path = str(tmp_path / 'ckpt')
  quantized_checkpoints.save_quantized(path, rtn_run[0], tiny[0])
  with open(os.path.join(path, quantized_checkpoints.META_FILE)) as f:
    assert len(json.load(f)['arrays']) > 50            # every array has its CRC
  damage(largest_array_file(path), how)
  with pytest.raises(integrity.DamagedFileError, match=rf'^.*{message}') as error:
    quantized_checkpoints.load_quantized(path, tiny[0])
  assert '\n' not in str(error.value)


def test_damaged_metadata_is_reported_in_one_line(tiny, rtn_run, tmp_path):
  path = str(tmp_path / 'ckpt')
  quantized_checkpoints.save_quantized(path, rtn_run[0], tiny[0])
  meta = os.path.join(path, quantized_checkpoints.META_FILE)
  with open(meta) as f:
    text = f.read()
  with open(meta, 'w') as f:
    f.write(text[:len(text) // 2])
  with pytest.raises(integrity.DamagedFileError,
                     match=r'^.*quant_meta\.json is not a readable quantized-checkpoint metadata '
                           r'file \(JSONDecodeError: .*\); it is truncated or corrupt: delete '
                           r'.*ckpt and quantize again\.$'):
    quantized_checkpoints.load_quantized(path, tiny[0])


def test_a_truncated_snapshot_says_to_delete_it(rtn_run, tmp_path):
  snapshot = quantized_checkpoints.SnapshotFile(str(tmp_path / 'calibration_state.npz'))
  snapshot.save({'layers_0': rtn_run[0]['layers_0']}, {'next_block': 1})
  tree, info = snapshot.load()
  assert info == {'next_block': 1} and set(tree) == {'layers_0'}
  data = open(snapshot.path, 'rb').read()
  for damaged in (data[:len(data) // 2], b'junk'):
    with open(snapshot.path, 'wb') as f:
      f.write(damaged)
    with pytest.raises(integrity.DamagedFileError,
                       match=r'^.*calibration_state\.npz is not a readable calibration snapshot '
                             r'.*delete it and rerun to recalibrate from block 1\.$'):
      snapshot.load()


def test_a_snapshot_holding_nan_is_refused(rtn_run, tmp_path):
  snapshot = quantized_checkpoints.SnapshotFile(str(tmp_path / 'calibration_state.npz'))
  layer = dict(rtn_run[0]['layers_0'])
  layer['norm'] = {'weight': layer['norm']['weight'] * float('nan')}
  snapshot.save({'layers_0': layer}, {'next_block': 1})
  with pytest.raises(integrity.NonFiniteError,
                     match=r'^.*calibration_state\.npz: tensor layers_0/norm/weight holds 32 '
                           r'NaN/Inf value\(s\) of 32; the snapshot is damaged: delete it'):
    snapshot.load()


class _Killed(BaseException):
  pass


@pytest.mark.parametrize('when', ['writing the metadata', 'between the two renames'])
def test_a_kill_during_save_leaves_the_previous_checkpoint_usable(tiny, rtn_run, tmp_path,
                                                                  monkeypatch, when):
  path = str(tmp_path / 'ckpt')
  quantized_checkpoints.save_quantized(path, rtn_run[0], tiny[0], {'n': 1})
  rename = os.rename

  def replace(src, dst):
    if dst == path:                  # the old one is aside, the new one not yet in place
      raise _Killed()
    rename(src, dst)

  def die(*args):
    raise _Killed()

  with monkeypatch.context() as m:
    m.setattr(shutil, 'rmtree', lambda *a, **k: None)    # a killed process cleans nothing
    if when == 'writing the metadata':
      m.setattr(quantized_checkpoints.atomic, 'write_json', die)
    else:
      m.setattr(quantized_checkpoints.os, 'replace', replace)
    with pytest.raises(_Killed):
      quantized_checkpoints.save_quantized(path, rtn_run[0], tiny[0], {'n': 2})
  assert os.path.exists(path) == (when == 'writing the metadata')
  _, report = quantized_checkpoints.load_quantized(path, tiny[0])
  assert report == {'n': 1}


def _v1_values(weight):
  """A QuantizedWeight's values as format version 1 stored them: codes (..., in, out), int4
  ones packed in neighbouring pairs along `in` (row 2i low nibble, 2i + 1 high), uint8."""
  codes = np.asarray(weight.codes())
  if not weight.packed:
    return codes
  if codes.shape[-2] % 2:
    codes = np.concatenate([codes, np.zeros_like(codes[..., :1, :])], axis=-2)
  low, high = codes[..., 0::2, :], codes[..., 1::2, :]
  return ((low & 0x0F) | (high << 4)).astype(np.int8).view(np.uint8)


def test_a_version_1_checkpoint_loads_into_todays_layout(tiny, rtn_run, tmp_path, monkeypatch):
  """Version 1 stored the weights (in, out) with int4 pairs of neighbours; loading one gives
  the tree version 2 stores, bit for bit (the int4 and the 8-bit weights)."""
  qparams = rtn_run[0]
  is_weight = lambda x: isinstance(x, qtypes.QuantizedWeight)
  weights = [w for w in jax.tree.leaves(qparams, is_leaf=is_weight) if is_weight(w)]
  assert any(w.packed for w in weights)
  old = jax.tree.map(lambda w: w.replace(values=jnp.asarray(_v1_values(w))) if is_weight(w)
                     else w, qparams, is_leaf=is_weight)
  path = str(tmp_path / 'v1')
  with monkeypatch.context() as m:
    m.setattr(quantized_checkpoints, 'FORMAT_VERSION', 1)
    quantized_checkpoints.save_quantized(path, old, tiny[0])
  loaded, _ = quantized_checkpoints.load_quantized(path, tiny[0])
  for want, got in zip(jax.tree.leaves(qparams), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  with open(os.path.join(path, quantized_checkpoints.META_FILE)) as f:
    doc = json.load(f)
  doc['format_version'] = 7
  with open(os.path.join(path, quantized_checkpoints.META_FILE), 'w') as f:
    json.dump(doc, f)
  with pytest.raises(ValueError, match=r'format_version 7 is not supported .*reads \(1, 2\)'):
    quantized_checkpoints.load_quantized(path, tiny[0])

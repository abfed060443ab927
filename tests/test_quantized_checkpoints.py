"""Quantized checkpoints: atomic overwrite, the model they belong to, and the preset recorded."""
import json
import os

import pytest

from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.io import integrity
from ouromamba_jax.models import build_model
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
  with pytest.raises(ValueError, match=r'quantized for an unregistered VisionMamba \(.*depth=2.*'
                                       r'not for this model, vim_t_cifar10 \(.*depth=24'):
    quantized_checkpoints.load_quantized(path, build_model('vim_t_cifar10'))


def test_a_nan_array_is_refused_on_load_naming_checkpoint_and_param(tiny, rtn_run, tmp_path):
  qparams = dict(rtn_run[0])
  qparams['norm_f'] = {'weight': qparams['norm_f']['weight'].at[2].set(float('inf'))}
  path = str(tmp_path / 'ckpt')
  quantized_checkpoints.save_quantized(path, qparams, tiny[0])
  with pytest.raises(integrity.NonFiniteError,
                     match=r'^.*ckpt: tensor norm_f/weight holds 1 NaN/Inf value\(s\) of 32; the '
                           r'checkpoint is damaged: delete .*ckpt and quantize again\.$'):
    quantized_checkpoints.load_quantized(path, tiny[0])


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

"""Quantized checkpoints: atomic overwrite, the model they belong to, and the preset recorded."""
import json
import os

import pytest

from ouromamba_jax import quantized_checkpoints
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

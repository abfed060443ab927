"""Mode `convert`: hustvl .pth -> safetensors, strict against config.model, exact round trip."""
import ml_collections
import numpy as np
import pytest

from configs import common
from ouromamba_jax import checkpoints
from ouromamba_jax.stages import convert
from ouromamba_jax.io import CheckpointMismatchError
from ouromamba_jax.io import read_state_dict
from ouromamba_jax.io import safetensors_io
from tests.fixtures import torch_fixtures

PTH = str(torch_fixtures.FIXTURES / 'vim_depth2_img224.pth')
FIXTURE_MODEL = dict(depth=2, d_model=32, num_classes=10)   # vim_t at 224, as the fixture


def _config(tmp_path, **convert_fields) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.mode = 'convert'
  c.model = common.model_config('vim_t', **FIXTURE_MODEL)
  c.convert = common.convert_config()
  c.convert.update(convert_fields)
  c.workdir = str(tmp_path)
  return c


def test_round_trip_is_exact(tmp_path):
  out = convert.convert(_config(tmp_path, input=PTH), str(tmp_path))
  assert out['output'] == str(tmp_path / 'vim_depth2_img224.safetensors')
  assert out['dtype'] == 'float32'
  source, converted = read_state_dict(PTH), safetensors_io.read_safetensors(out['output'])
  assert sorted(source) == sorted(converted)
  for key, value in source.items():
    assert converted[key].dtype == value.dtype
    np.testing.assert_array_equal(converted[key], value, err_msg=key)


def test_bfloat16_output(tmp_path):
  out = convert.convert(_config(tmp_path, input=PTH, dtype='bfloat16',
                                output=str(tmp_path / 'b.safetensors')), str(tmp_path))
  tensors = safetensors_io.read_safetensors(out['output'])
  assert {str(v.dtype) for v in tensors.values()} == {'bfloat16'}


def test_wrong_architecture_is_refused(tmp_path):
  config = _config(tmp_path, input=PTH)
  config.model.overrides.d_model = 48
  with pytest.raises(CheckpointMismatchError):
    convert.convert(config, str(tmp_path))
  assert not list(tmp_path.glob('*.safetensors'))


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match=r'vim_t_midclstok_76p1acc.pth from '
                     r'https://huggingface.co/hustvl/Vim-tiny-midclstok.*--config.model.checkpoint='):
    convert.convert(_config(tmp_path), str(tmp_path))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    convert.convert(_config(tmp_path, input=str(tmp_path / 'x.pth')), str(tmp_path))
  with pytest.raises(ValueError, match='must end in .safetensors'):
    convert.convert(_config(tmp_path, input=PTH, output=str(tmp_path / 'x.npz')), str(tmp_path))
  with pytest.raises(ValueError, match='convert.dtype must be'):
    convert.convert(_config(tmp_path, input=PTH, dtype='int8'), str(tmp_path))


def test_hints_name_the_official_files():
  for name, filename in (('vim_s', 'vim_s_midclstok_80p5acc.pth'),
                         ('vim_b', 'vim_b_midclstok_81p9acc.pth')):
    message = checkpoints.missing_checkpoint_message(name)
    assert filename in message and '--config.model.checkpoint=' in message
  assert '--config.model.checkpoint=bundled' in checkpoints.missing_checkpoint_message('vim_t_cifar10')

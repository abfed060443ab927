"""The torch-free `.pth` reader: real torch files, storage geometry, and refusal of foreign code."""
import argparse
import collections
import zipfile

import ml_dtypes
import numpy as np
import pytest

from ouromamba_jax.io import pth
from tests.fixtures import torch_fixtures
from tests.io import synthetic_pth as sp

FIXTURES = torch_fixtures.FIXTURES


def test_training_script_checkpoint_loads_with_all_its_entries():
  ckpt = pth.load_pth(FIXTURES / 'vim_depth2_img224.pth')
  assert set(ckpt) == {'model', 'optimizer', 'lr_scheduler', 'epoch', 'model_ema', 'scaler',
                       'args'}
  assert ckpt['epoch'] == 3 and ckpt['model_ema'] is None
  assert isinstance(ckpt['args'], argparse.Namespace)
  assert ckpt['args'].opt_betas == (0.9, 0.999) and ckpt['args'].tags == {'ablation'}
  assert isinstance(ckpt['model'], collections.OrderedDict)
  assert ckpt['model']['layers.1.mixer.A_b_log'].shape == (64, 16)
  assert ckpt['model']['patch_embed.proj.weight'].dtype == np.float32
  adam = ckpt['optimizer']['state'][0]
  assert adam['step'].shape == () and adam['exp_avg'].shape == (3,)


def test_state_dict_is_taken_from_model_key_or_bare():
  from_dict = pth.load_pth_state_dict(FIXTURES / 'vim_depth2_img224.pth')
  assert 'pos_embed' in from_dict and 'optimizer' not in from_dict
  bare = pth.load_pth_state_dict(FIXTURES / 'vim_tiny_bare_state_dict.pth')
  assert 'norm_f.weight' in bare
  with pytest.raises(pth.PthFormatError, match="'model_ema'.*not a state_dict"):
    pth.load_pth_state_dict(FIXTURES / 'vim_depth2_img224.pth', key='model_ema')
  with pytest.raises(pth.PthFormatError, match='neither a state_dict'):
    pth.load_pth_state_dict(FIXTURES / 'vim_depth2_img224.pth', key='weights')


@pytest.mark.parametrize('name', ['torch_storage_layouts.pth', 'torch_legacy_format.pth'])
def test_storage_layouts_match_torch(name):
  """Offsets, strides (transposed, sliced, permuted, broadcast), shared storages, all dtypes."""
  expected = np.load(FIXTURES / 'torch_storage_layouts.npz')
  loaded = pth.load_pth(FIXTURES / name)
  state = loaded['state'] if 'state' in loaded else loaded
  assert len(state) >= 6
  for key, value in state.items():
    want = expected[key]
    if key == 'bfloat16':
      assert value.dtype == ml_dtypes.bfloat16
      value = value.astype(np.float32)
    assert value.dtype == want.dtype and value.shape == want.shape, key
    np.testing.assert_array_equal(value, want, err_msg=key)
    assert value.flags.c_contiguous and value.flags.writeable


def test_nested_containers_keep_their_types():
  loaded = pth.load_pth(FIXTURES / 'torch_storage_layouts.pth')
  scalar, one, a, (int8, none) = loaded['extra']
  assert scalar.shape == () and float(scalar) == 3.5
  assert (one, a, none) == (1, 'a', None) and int8.dtype == np.int8
  # Two tensors viewing one storage come back as independent arrays.
  loaded['state']['shared_head'][:] = 0
  assert np.all(loaded['state']['shared_tail'] != 0)


def test_synthetic_offsets_strides_and_big_endian(tmp_path):
  storage = np.arange(24, dtype=np.float32)
  big = storage.view(np.uint32).byteswap().tobytes()
  body = sp.dict_of({
      'window': sp.tensor('FloatStorage', '0', 24, 5, (2, 3), (6, 2)),
      'column': sp.tensor('FloatStorage', '0', 24, 3, (4,), (6,)),
      'broadcast': sp.tensor('FloatStorage', '0', 24, 7, (2, 2), (0, 1)),
  })
  sp.write_zip(tmp_path / 'big.pth', sp.pickle_bytes(body), {'0': big}, byteorder='big')
  loaded = pth.load_pth(tmp_path / 'big.pth')
  np.testing.assert_array_equal(loaded['window'], [[5, 7, 9], [11, 13, 15]])
  np.testing.assert_array_equal(loaded['column'], [3, 9, 15, 21])
  np.testing.assert_array_equal(loaded['broadcast'], [[7, 8], [7, 8]])


def test_bfloat16_big_endian_and_v3_dtype_tensors(tmp_path):
  values = np.array([1.5, -2.0, 0.25], ml_dtypes.bfloat16)
  f8 = np.array([0.5, -1.0, 448.0], ml_dtypes.float8_e4m3fn)
  sp.write_state_dict(tmp_path / 'bf16.pth', {'w': values}, byteorder='big')
  np.testing.assert_array_equal(pth.load_pth(tmp_path / 'bf16.pth')['w'], values)
  body = sp.dict_of({'f8': sp.tensor('UntypedStorage', '0', 3, 0, (3,), (1,),
                                     rebuild='_rebuild_tensor_v3', storage_module='torch.storage',
                                     extra_args=sp.global_ref('torch', 'float8_e4m3fn'))})
  sp.write_zip(tmp_path / 'f8.pth', sp.pickle_bytes(body), {'0': f8.tobytes()})
  loaded = pth.load_pth(tmp_path / 'f8.pth')['f8']
  assert loaded.dtype == ml_dtypes.float8_e4m3fn
  np.testing.assert_array_equal(loaded.astype(np.float32), f8.astype(np.float32))


@pytest.mark.parametrize('module,name', [('os', 'system'), ('builtins', 'eval'),
                                         ('__builtin__', 'exec'), ('subprocess', 'Popen'),
                                         ('torch.nn.modules.linear', 'Linear')])
def test_foreign_globals_are_refused_by_name(tmp_path, module, name):
  sentinel = tmp_path / 'pwned'
  payload = sp.call(module, name, sp.text(f'open({str(sentinel)!r}, "w")'))
  body = sp.dict_of({'ok': sp.tensor('FloatStorage', '0', 1, 0, (1,), (1,)), 'evil': payload})
  sp.write_zip(tmp_path / 'evil.pth', sp.pickle_bytes(body), {'0': b'\0' * 4})
  with pytest.raises(pth.UnsafePickleError, match=rf'global {module}\.{name}\b'):
    pth.load_pth(tmp_path / 'evil.pth')
  assert not sentinel.exists()


def test_object_state_on_allowed_classes_is_refused(tmp_path):
  """BUILD on an allowed class would patch it for the whole process."""
  body = (sp.global_ref('collections', 'OrderedDict') + sp.EMPTY_DICT + sp.text('injected') +
          sp.integer(1) + sp.SETITEM + sp.BUILD)
  sp.write_zip(tmp_path / 'patch.pth', sp.pickle_bytes(body), {})
  with pytest.raises(pth.UnsafePickleError, match='refusing to set pickled state on a type'):
    pth.load_pth(tmp_path / 'patch.pth')
  assert not hasattr(collections.OrderedDict, 'injected')


def test_malformed_checkpoints_raise_clear_errors(tmp_path):
  out_of_range = sp.dict_of({'w': sp.tensor('FloatStorage', '0', 4, 2, (3,), (1,))})
  sp.write_zip(tmp_path / 'range.pth', sp.pickle_bytes(out_of_range), {'0': b'\0' * 16})
  with pytest.raises(pth.PthFormatError, match='reaches element 4 of a storage with 4'):
    pth.load_pth(tmp_path / 'range.pth')

  missing = sp.dict_of({'w': sp.tensor('FloatStorage', '9', 4, 0, (4,), (1,))})
  sp.write_zip(tmp_path / 'missing.pth', sp.pickle_bytes(missing), {})
  with pytest.raises(pth.PthFormatError, match='archive/data/9 is missing'):
    pth.load_pth(tmp_path / 'missing.pth')

  module_pid = sp.tuple_of(sp.text('module'), sp.text('Net')) + sp.BINPERSID
  sp.write_zip(tmp_path / 'module.pth', sp.pickle_bytes(module_pid), {})
  with pytest.raises(pth.PthFormatError, match="unsupported persistent id 'module'"):
    pth.load_pth(tmp_path / 'module.pth')

  with zipfile.ZipFile(tmp_path / 'script.pt', 'w') as z:
    z.writestr('model/code/__torch__.py', 'pass')
  with pytest.raises(pth.PthFormatError, match='TorchScript'):
    pth.load_pth(tmp_path / 'script.pt')

  (tmp_path / 'noise.pth').write_bytes(b'not a checkpoint at all')
  with pytest.raises(pth.PthFormatError, match='not a PyTorch checkpoint|neither a zip'):
    pth.load_pth(tmp_path / 'noise.pth')

  with pytest.raises(FileNotFoundError):
    pth.load_pth(tmp_path / 'absent.pth')


def test_swin_style_checkpoint_with_yacs_config_and_state_dict_metadata():
  """VMamba's training checkpoints: torch `state_dict()`s (OrderedDicts carrying `_metadata`)
  and a yacs CfgNode 'config'; both load inert."""
  ckpt = pth.load_pth(FIXTURES / 'vmamba_tiny_recipe.pth')
  assert isinstance(ckpt['config'], pth.ConfigNode) and ckpt['config']['MODEL']['TYPE'] == 'vssm'
  assert not hasattr(ckpt['model'], '_metadata') and ckpt['epoch'] == 7


def test_state_dict_build_carries_only_metadata(tmp_path):
  body = (sp.call('collections', 'OrderedDict') + sp.EMPTY_DICT + sp.text('__class__') + sp.integer(1) + sp.SETITEM + sp.BUILD)
  sp.write_zip(tmp_path / 'state.pth', sp.pickle_bytes(body), {})
  with pytest.raises(pth.UnsafePickleError, match='refusing to set pickled state on a OrderedDict'):
    pth.load_pth(tmp_path / 'state.pth')

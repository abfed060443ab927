"""Official MambaVision key map: the released `.pth.tar` container (timm CheckpointSaver), names
and shapes of the released variants, strict errors, exact export/import round trips."""
import jax
import numpy as np
import pytest

from ouromamba_jax.io import mambavision_keys
from ouromamba_jax.io import pth
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.io.state_dicts import CheckpointMismatchError
from ouromamba_jax.models import registry
from ouromamba_jax.models.mambavision import MambaVision
from tests.fixtures.torch_fixtures import FIXTURES

PTH = FIXTURES / 'mambavision_tiny_recipe.pth.tar'
TINY = MambaVision(num_classes=5, img_size=56, dim=4, in_dim=4, depths=(1, 2, 3, 2),
                   num_heads=(1, 1, 2, 4), window_size=(8, 8, 2, 2))


def test_container_is_the_training_scripts_dict():
  """timm's CheckpointSaver layout, as the released .pth.tar files; read without torch."""
  raw = pth.load_pth(PTH)
  assert {'state_dict', 'state_dict_ema', 'optimizer', 'args', 'epoch', 'arch'} <= set(raw)
  assert raw['args'].model == 'mamba_vision_T'
  assert raw['state_dict']['patch_embed.conv_down.1.num_batches_tracked'].dtype == np.int64


def test_fixture_keys_are_exactly_the_models():
  """The official torch model's state_dict names and shapes (less the BN counters) == ours."""
  state_dict = mambavision_keys.drop_bn_counters(pth.load_pth_state_dict(PTH, 'state_dict'))
  table = mambavision_keys.key_table(mambavision_keys.model_param_shapes(TINY))
  assert {k: tuple(v.shape) for k, v in state_dict.items()} == {
      k: e.hustvl_shape for k, e in table.items()}


def test_mambavision_b_key_table():
  """MambaVision-B (mamba_vision_B): dims 128..1024, layer scale, mixer d_state 8, expand 1."""
  table = mambavision_keys.key_table(
      mambavision_keys.model_param_shapes(registry.build_model('mambavision_b')))
  shapes = {k: e.hustvl_shape for k, e in table.items()}
  assert shapes['patch_embed.conv_down.0.weight'] == (64, 3, 3, 3)
  assert shapes['patch_embed.conv_down.4.running_var'] == (128,)
  assert shapes['levels.0.blocks.2.conv1.weight'] == (128, 128, 3, 3)
  assert 'levels.0.blocks.2.gamma' not in shapes            # layer_scale_conv=None
  assert shapes['levels.2.downsample.reduction.0.weight'] == (1024, 512, 3, 3)
  mixer = 'levels.2.blocks.4.mixer.'
  assert shapes[mixer + 'in_proj.weight'] == (512, 512)
  assert shapes[mixer + 'conv1d_x.weight'] == (256, 1, 3)
  assert shapes[mixer + 'x_proj.weight'] == (32 + 16, 256)
  assert shapes[mixer + 'dt_proj.weight'] == (256, 32) and shapes[mixer + 'dt_proj.bias'] == (256,)
  assert shapes[mixer + 'A_log'] == (256, 8) and shapes[mixer + 'D'] == (256,)
  assert shapes['levels.2.blocks.5.mixer.qkv.weight'] == (1536, 512)   # blocks 5..9 attend
  assert shapes['levels.3.blocks.3.mixer.proj.bias'] == (1024,)
  assert shapes['levels.3.blocks.4.gamma_2'] == (1024,)
  assert 'levels.3.downsample.reduction.0.weight' not in shapes
  assert shapes['norm.running_mean'] == (1024,) and shapes['head.weight'] == (1000, 1024)


def test_state_dict_and_its_ema_load_separately():
  model = mambavision_keys.params_from_file(PTH, TINY)
  ema = mambavision_keys.params_from_file(PTH, TINY, key='state_dict_ema')
  raw = pth.load_pth(PTH)
  key = 'levels.2.blocks.1.mixer.in_proj.weight'
  kernel = lambda p: np.asarray(p['levels_2']['blocks_1']['mixer']['in_proj']['kernel'])
  np.testing.assert_array_equal(kernel(model), raw['state_dict'][key].T)
  np.testing.assert_array_equal(kernel(ema), raw['state_dict_ema'][key].T)


def test_every_problem_is_reported_in_one_error():
  state_dict = pth.load_pth_state_dict(PTH, 'state_dict')
  del state_dict['levels.2.blocks.0.mixer.D']
  state_dict['levels.2.blocks.0.gamma_1'] = np.zeros((16,), np.float32)
  state_dict['levels.2.blocks.0.mixer.A_log'] = np.zeros((8, 4), np.float32)
  with pytest.raises(CheckpointMismatchError) as error:
    mambavision_keys.params_from_state_dict(state_dict, mambavision_keys.model_param_shapes(TINY))
  message = str(error.value)
  assert '1 missing, 1 unexpected, 1 mismatched' in message
  assert 'levels.2.blocks.0.mixer.D: expected shape (8,)' in message
  assert 'gamma_1: shape (16,) (a layer scale' in message
  assert 'mixer.A_log: checkpoint (8, 4), model expects (8, 8)' in message


def test_safetensors_export_round_trips_exactly(tmp_path):
  state_dict = mambavision_keys.drop_bn_counters(pth.load_pth_state_dict(PTH, 'state_dict'))
  params = mambavision_keys.params_from_state_dict(
      state_dict, mambavision_keys.model_param_shapes(TINY))
  path = tmp_path / 'mambavision.safetensors'
  mambavision_keys.export_safetensors(params, path)
  exported = safetensors_io.read_safetensors(path)
  assert exported.keys() == state_dict.keys()
  for key, value in state_dict.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  again = mambavision_keys.params_from_file(path, TINY)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_checkpoints_pick_the_mambavision_names(tmp_path):
  """`load_checkpoint` / `save_checkpoint` (every mode's loader, train's export) by family."""
  from ouromamba_jax import checkpoints  # pylint: disable=import-outside-toplevel
  params = checkpoints.load_checkpoint(str(PTH), TINY)        # default entry: 'state_dict'
  path = tmp_path / 'model.safetensors'
  checkpoints.save_checkpoint(params, str(path))
  assert 'levels.2.blocks.0.mixer.conv1d_x.weight' in safetensors_io.read_safetensors(path)
  jax.tree.map(np.testing.assert_array_equal, checkpoints.load_checkpoint(str(path), TINY), params)

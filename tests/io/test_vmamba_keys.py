"""Official VMamba key map: names and shapes of the released variants, strict errors, exact
export/import round trips, both weight sets of a training-script checkpoint."""
import jax
import numpy as np
import pytest

from ouromamba_jax.io import pth
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.io import vmamba_keys
from ouromamba_jax.io.state_dicts import CheckpointMismatchError
from ouromamba_jax.models import registry
from ouromamba_jax.models.vmamba import VMamba
from tests.fixtures.torch_fixtures import FIXTURES

PTH = FIXTURES / 'vmamba_tiny_recipe.pth'
TINY = VMamba(num_classes=5, img_size=48, dims=4, depths=(1, 1, 2, 1), d_state=1, ssm_ratio=1.0)


def test_fixture_keys_are_exactly_the_models():
  """The official torch VSSM's state_dict names and shapes == our key table."""
  state_dict = pth.load_pth_state_dict(PTH)
  table = vmamba_keys.key_table(vmamba_keys.model_param_shapes(TINY))
  assert {k: tuple(v.shape) for k, v in state_dict.items()} == {
      k: e.hustvl_shape for k, e in table.items()}


def test_vmamba_b_key_table_block_and_stems():
  """VMamba-B (vmambav2_base_224) shapes: dims 128, ssm_ratio 2, d_state 1, dt_rank 8 at stage 0."""
  table = vmamba_keys.key_table(vmamba_keys.model_param_shapes(registry.build_model('vmamba_b')))
  shapes = {k: e.hustvl_shape for k, e in table.items()}
  block = 'layers.0.blocks.1.op.'
  assert shapes[block + 'in_proj.weight'] == (256, 128)
  assert shapes[block + 'conv2d.weight'] == (256, 1, 3, 3)
  assert shapes[block + 'x_proj_weight'] == (4, 8 + 2, 256)
  assert shapes[block + 'dt_projs_weight'] == (4, 256, 8)
  assert shapes[block + 'dt_projs_bias'] == (4, 256)
  assert shapes[block + 'A_logs'] == (1024, 1) and shapes[block + 'Ds'] == (1024,)
  assert shapes[block + 'out_norm.weight'] == (256,) and shapes[block + 'out_proj.weight'] == (128, 256)
  assert shapes['layers.2.blocks.14.mlp.fc1.weight'] == (2048, 512)
  assert shapes['patch_embed.0.weight'] == (64, 3, 3, 3) and shapes['patch_embed.7.bias'] == (128,)
  assert shapes['layers.2.downsample.1.weight'] == (1024, 512, 3, 3)
  assert 'layers.3.downsample.1.weight' not in shapes
  assert shapes['classifier.norm.weight'] == (1024,) and shapes['classifier.head.weight'] == (1000, 1024)
  assert len(shapes) == 4 * 2 + 21 * 18 + 3 * 4 + 4  # stem, 18 per block, downsamples, classifier


def test_model_and_model_ema_load_separately():
  model = vmamba_keys.params_from_file(PTH, TINY)
  ema = vmamba_keys.params_from_file(PTH, TINY, key='model_ema')
  raw = pth.load_pth(PTH)
  assert raw['config']['MODEL']['VSSM']['DEPTHS'] == [1, 1, 2, 1]
  kernel = lambda p: np.asarray(p['layers_2']['blocks_1']['op']['in_proj']['kernel'])
  np.testing.assert_array_equal(kernel(model), raw['model']['layers.2.blocks.1.op.in_proj.weight'].T)
  np.testing.assert_array_equal(kernel(ema), raw['model_ema']['layers.2.blocks.1.op.in_proj.weight'].T)


def test_every_problem_is_reported_in_one_error():
  state_dict = pth.load_pth_state_dict(PTH)
  del state_dict['layers.1.blocks.0.op.Ds']
  state_dict['patch_embed.proj.weight'] = np.zeros((4, 3, 4, 4), np.float32)
  state_dict['layers.0.blocks.0.op.conv2d.bias'] = np.zeros((4,), np.float32)
  state_dict['layers.0.blocks.0.op.A_logs'] = np.zeros((16, 2), np.float32)
  with pytest.raises(CheckpointMismatchError) as error:
    vmamba_keys.params_from_state_dict(state_dict, vmamba_keys.model_param_shapes(TINY))
  message = str(error.value)
  assert '1 missing, 2 unexpected, 1 mismatched' in message
  assert 'layers.1.blocks.0.op.Ds: expected shape (32,)' in message
  assert 'patch_embed.proj.weight: shape (4, 3, 4, 4) (a pre-v2 VMamba checkpoint' in message
  assert 'conv2d.bias: shape (4,) (a conv bias' in message
  assert 'layers.0.blocks.0.op.A_logs: checkpoint (16, 2), model expects (16, 1)' in message
  assert error.value.missing == ['layers.1.blocks.0.op.Ds']


def test_safetensors_export_round_trips_exactly(tmp_path):
  state_dict = pth.load_pth_state_dict(PTH)
  params = vmamba_keys.params_from_state_dict(state_dict, vmamba_keys.model_param_shapes(TINY))
  path = tmp_path / 'vmamba.safetensors'
  vmamba_keys.export_safetensors(params, path)
  exported = safetensors_io.read_safetensors(path)
  assert exported.keys() == state_dict.keys()
  for key, value in state_dict.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  again = vmamba_keys.params_from_file(path, TINY)
  jax.tree.map(np.testing.assert_array_equal, again, params)

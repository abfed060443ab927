"""hustvl key map: documented names/shapes, strict errors, exact export/import round trips."""
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from ouromamba_jax import io as ckpt_io
from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import pth
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.models import registry
from ouromamba_jax.models.vim import VisionMamba
from tests.fixtures import torch_fixtures
from tests.io import synthetic_pth

TINY = torch_fixtures.load_model_fixture('vim_tiny_bare_state_dict')


def vim_t_documented_state_dict_shapes():
  """Vim-Tiny keys and torch shapes as listed in official_code_notes.md A.2."""
  shapes = {'patch_embed.proj.weight': (192, 3, 16, 16), 'patch_embed.proj.bias': (192,),
            'cls_token': (1, 1, 192), 'pos_embed': (1, 197, 192), 'norm_f.weight': (192,),
            'head.weight': (1000, 192), 'head.bias': (1000,)}
  for i in range(24):
    p = f'layers.{i}.'
    shapes[p + 'norm.weight'] = (192,)
    shapes[p + 'mixer.in_proj.weight'] = (768, 192)
    shapes[p + 'mixer.out_proj.weight'] = (192, 384)
    for sfx in ('', '_b'):
      shapes[p + f'mixer.conv1d{sfx}.weight'] = (384, 1, 4)
      shapes[p + f'mixer.conv1d{sfx}.bias'] = (384,)
      shapes[p + f'mixer.x_proj{sfx}.weight'] = (44, 384)
      shapes[p + f'mixer.dt_proj{sfx}.weight'] = (384, 12)
      shapes[p + f'mixer.dt_proj{sfx}.bias'] = (384,)
      shapes[p + f'mixer.D{sfx}'] = (384,)
    shapes[p + 'mixer.A_log'] = (384, 16)
    shapes[p + 'mixer.A_b_log'] = (384, 16)
  return shapes


def test_vim_t_key_table_is_the_documented_hustvl_state_dict():
  table = hustvl_keys.key_table(hustvl_keys.model_param_shapes(registry.build_model('vim_t')))
  assert {k: e.hustvl_shape for k, e in table.items()} == vim_t_documented_state_dict_shapes()
  assert table['layers.3.mixer.in_proj.weight'].flax_path == (
      'layers_3', 'mixer', 'in_proj', 'kernel')
  assert table['layers.0.mixer.conv1d_b.weight'].flax_shape == (4, 384)
  assert table['patch_embed.proj.weight'].flax_shape == (16, 16, 3, 192)


def test_an_unknown_kernel_has_no_layout():
  with pytest.raises(ValueError, match='no hustvl layout is known for the kernel at a/b/kernel'):
    hustvl_keys.layout_for(('a', 'b', 'kernel'))


def tiny_model(**overrides):
  return VisionMamba(**{**TINY.config, **overrides})


def test_strict_load_lists_every_problem_in_one_error():
  state = pth.load_pth_state_dict(TINY.pth)
  del state['layers.0.mixer.D_b'], state['head.bias']
  state['layers.0.mixer.gamma'] = np.ones(8, np.float32)
  state['layers.3.norm.weight'] = np.ones(8, np.float32)
  state['module.norm_f.weight'] = np.ones(8, np.float32)
  state['pos_embed'] = np.zeros((1, 17, 8), np.float32)
  state['layers.0.mixer.A_log'] = state['layers.0.mixer.A_log'].astype(np.int64)
  with pytest.raises(ckpt_io.CheckpointMismatchError) as info:
    ckpt_io.params_from_state_dict(state, hustvl_keys.model_param_shapes(tiny_model()),
                                   source='tiny.pth')
  err = info.value
  assert sorted(err.missing) == ['head.bias', 'layers.0.mixer.D_b']
  assert sorted(err.unexpected) == ['layers.0.mixer.gamma', 'layers.3.norm.weight',
                                    'module.norm_f.weight']
  assert sorted(k for k, _, _ in err.mismatched) == ['layers.0.mixer.A_log', 'pos_embed']
  message = str(err)
  for needle in ('tiny.pth', '2 missing, 3 unexpected, 2 mismatched',
                 'layers.0.mixer.D_b: expected shape (16,)', 'head.bias: expected shape (3,)',
                 'layer scale', 'beyond the model depth (1)', "strip the 'module.' prefix",
                 'pos_embed: checkpoint (1, 17, 8), model expects (1, 5, 8)',
                 'layers.0.mixer.A_log: checkpoint dtype int64'):
    assert needle in message, needle


def test_params_from_file_error_names_the_model_config():
  with pytest.raises(ckpt_io.CheckpointMismatchError,
                     match=r'(?s)img_size=32.*pos_embed: checkpoint \(1, 5, 8\)'):
    ckpt_io.params_from_file(TINY.pth, tiny_model(img_size=32))


def test_training_dict_and_bare_state_dict_load_the_same_way(tmp_path):
  fixture = torch_fixtures.load_model_fixture('vim_depth2_img224')
  model = VisionMamba(**fixture.config)
  params = ckpt_io.params_from_file(fixture.pth, model)
  bare = tmp_path / 'bare.pth'
  synthetic_pth.write_state_dict(bare, pth.load_pth_state_dict(fixture.pth))
  again = ckpt_io.params_from_file(bare, model)
  jax.tree.map(np.testing.assert_array_equal, params, again)
  assert params['layers_1']['mixer']['x_proj_b']['kernel'].shape == (64, 2 + 2 * 16)
  assert params['pos_embed'].dtype == jnp.float32


def test_export_reproduces_the_torch_state_dict_bit_for_bit(tmp_path):
  """pth -> Flax params -> safetensors gives back exactly the torch tensors and layouts."""
  original = pth.load_pth_state_dict(TINY.pth)
  params = ckpt_io.params_from_file(TINY.pth, tiny_model())
  path = tmp_path / 'tiny.safetensors'
  ckpt_io.export_safetensors(params, path)
  exported = safetensors_io.read_safetensors(path)
  assert set(exported) == set(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  with safe_open(path, framework='numpy') as f:
    assert f.metadata()['format'] == 'pt' and f.metadata()['layout'] == 'hustvl-vim'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['tiny.safetensors']  # no temporaries


def test_random_params_round_trip_exactly_through_safetensors(tmp_path):
  model = tiny_model()
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype),
                        hustvl_keys.model_param_shapes(model))
  path = tmp_path / 'rand.safetensors'
  ckpt_io.export_safetensors({'params': params}, path)  # a full variables dict is accepted too
  loaded = ckpt_io.params_from_file(path, model)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_bf16_export_stores_bf16_and_loads_back_as_fp32(tmp_path):
  model = tiny_model()
  params = ckpt_io.params_from_file(TINY.pth, model)
  path = tmp_path / 'bf16.safetensors'
  ckpt_io.export_safetensors(params, path, dtype=jnp.bfloat16)
  raw = safetensors_io.read_safetensors(path)
  assert {v.dtype for v in raw.values()} == {np.dtype(ml_dtypes.bfloat16)}
  loaded = ckpt_io.params_from_file(path, model)
  expected = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), params)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  as_bf16 = ckpt_io.params_from_file(path, model, dtype=jnp.bfloat16)
  assert as_bf16['head']['kernel'].dtype == jnp.bfloat16


def test_safetensors_checkpoint_gives_the_torch_logits(tmp_path):
  model = tiny_model(scan_implementation='sequential')
  path = tmp_path / 'tiny.safetensors'
  ckpt_io.export_safetensors(ckpt_io.params_from_file(TINY.pth, model), path)
  logits = model.apply({'params': ckpt_io.params_from_file(path, model)}, TINY.images)
  assert torch_fixtures.relative_error(logits, TINY.logits) <= 1e-5


def test_export_refuses_non_array_leaves_and_keeps_the_old_file(tmp_path):
  params = ckpt_io.params_from_file(TINY.pth, tiny_model())
  path = tmp_path / 'w.safetensors'
  ckpt_io.export_safetensors(params, path)
  before = path.read_bytes()
  params['layers_0']['mixer']['in_proj']['kernel'] = object()  # e.g. a quantized weight
  with pytest.raises(TypeError, match='layers_0/mixer/in_proj/kernel holds a object, not a float array'):
    ckpt_io.export_safetensors(params, path)
  assert path.read_bytes() == before


def test_unknown_suffix_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="unknown checkpoint suffix '.npz'"):
    ckpt_io.params_from_file(tmp_path / 'w.npz', tiny_model())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('HUSTVL_VIM_T_CHECKPOINT'),
                    reason='set HUSTVL_VIM_T_CHECKPOINT to hustvl vim_t_midclstok_76p1acc.pth')
def test_released_vim_t_checkpoint_loads_strictly_and_round_trips(tmp_path):
  """The released 115 MB training-script checkpoint (not shipped; downloaded by hand)."""
  path = os.environ['HUSTVL_VIM_T_CHECKPOINT']
  model = registry.build_model('vim_t')
  params = ckpt_io.params_from_file(path, model)
  exported = tmp_path / 'vim_t.safetensors'
  ckpt_io.export_safetensors(params, exported)
  original = pth.load_pth_state_dict(path)
  for key, value in safetensors_io.read_safetensors(exported).items():
    np.testing.assert_array_equal(value, original[key], err_msg=key)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_a_nan_weight_is_refused_in_one_line_naming_file_and_tensor(tmp_path, suffix):
  state = pth.load_pth_state_dict(TINY.pth)
  state['layers.0.mixer.x_proj_b.weight'] = state['layers.0.mixer.x_proj_b.weight'].copy()
  state['layers.0.mixer.x_proj_b.weight'].flat[3] = np.nan
  path = tmp_path / f'bad{suffix}'
  if suffix == '.pth':
    synthetic_pth.write_state_dict(path, state)
  else:
    safetensors_io.safetensors_numpy.save_file(state, str(path))   # a file from elsewhere
  with pytest.raises(ckpt_io.NonFiniteError) as info:
    ckpt_io.params_from_file(path, tiny_model())
  message = str(info.value)
  assert '\n' not in message and str(path) in message
  assert 'tensor layers.0.mixer.x_proj_b.weight holds 1 NaN/Inf' in message

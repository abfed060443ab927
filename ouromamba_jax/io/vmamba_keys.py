"""Official VMamba (MzeroMiko/VMamba VSSM, channel-first 'ln2d') state-dict names and layouts
<-> our Flax `VMamba` param tree, loaded strictly.

Names: our paths follow the official ones (`layers_2/blocks_3/op/in_proj/kernel` is
`layers.2.blocks.3.op.in_proj.weight`) except the numbered nn.Sequential members:

  patch_embed/{conv_in,norm_in,conv_out,norm_out}  <-> patch_embed.{0,2,5,7}
  layers_i/downsample/{conv,norm}                   <-> layers.i.downsample.{1,3}
  classifier_{norm,head}                            <-> classifier.{norm,head}

Layouts: Linear / Linear2d weight (out, in) <-> kernel (in, out); Conv2d OIHW <-> HWIO
(depthwise (C, 1, k, k) <-> (k, k, 1, C)); LayerNorm weight/bias and the stacked SSM params
(x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds) as is.

Released checkpoints are the training script's dicts (`save_checkpoint_ema`: 'model',
'model_ema', optimizer state, a yacs 'config', ...); `key` picks 'model' or 'model_ema'.
Every missing, unexpected or misshaped key is reported in ONE CheckpointMismatchError.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.io import state_dicts
from ouromamba_jax.io.hustvl_keys import AS_IS, CONV2D, LINEAR, Entry

_RENAMES = (
    (r'^patch_embed\.conv_in\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm_in\.', 'patch_embed.2.'),
    (r'^patch_embed\.conv_out\.', 'patch_embed.5.'),
    (r'^patch_embed\.norm_out\.', 'patch_embed.7.'),
    (r'\.downsample\.conv\.', '.downsample.1.'),
    (r'\.downsample\.norm\.', '.downsample.3.'),
    (r'^classifier_(norm|head)\.', r'classifier.\1.'),
)
_LINEAR_MODULES = frozenset({'in_proj', 'out_proj', 'fc1', 'fc2', 'classifier_head'})
_CONV_MODULES = frozenset({'conv_in', 'conv_out', 'conv', 'conv2d'})

# Keys of other VMamba generations: an error each, with what it means.
_FOREIGN_KEY_HINTS = (
    (r'^module\.', "saved from a DistributedDataParallel wrapper: strip the 'module.' prefix"),
    (r'\.op\.(x_proj|dt_projs)\.\d+\.', 'unstacked per-direction projections (forward_type v0)'),
    (r'^patch_embed\.(proj|norm)\.|\.(ln_1|self_attention)\.|^(norm|head)\.',
     'a pre-v2 VMamba checkpoint (old names, patch embed v1)'),
    (r'\.downsample\.(reduction|norm)\.', 'PatchMerging2D downsample (v1); released v2 uses v3'),
    (r'\.op\.conv2d\.bias$', 'a conv bias (ssm_conv_bias=True); released v2 has none'),
    (r'\.op\.in_proj\.bias$|\.op\.out_proj\.bias$', 'biased projections; released v2 has none'),
)


def official_key(path: tuple[str, ...]) -> str:
  """('layers_1', 'blocks_0', 'op', 'in_proj', 'kernel') -> 'layers.1.blocks.0.op.in_proj.weight'."""
  parts = [re.sub(r'^(layers|blocks)_(\d+)$', r'\1.\2', p) for p in path]
  if parts[-1] == 'kernel':
    parts[-1] = 'weight'
  key = '.'.join(parts)
  for pattern, replacement in _RENAMES:
    key = re.sub(pattern, replacement, key)
  return key


def layout_for(path: tuple[str, ...]):
  if path[-1] != 'kernel':
    return AS_IS
  module = path[-2]
  if module in _LINEAR_MODULES:
    return LINEAR
  if module in _CONV_MODULES:
    return CONV2D
  raise ValueError(f'no VMamba layout is known for the kernel at {"/".join(path)}')


def key_table(param_shapes: Mapping[str, Any]) -> dict[str, Entry]:
  """{official key: Entry} for a Flax VMamba param tree of arrays or ShapeDtypeStructs."""
  return {official_key(path): Entry(path, layout_for(path), tuple(leaf.shape), leaf.dtype)
          for path, leaf in traverse_util.flatten_dict(state_dicts.unwrap(param_shapes)).items()}


def model_param_shapes(model) -> dict[str, Any]:
  images = jax.ShapeDtypeStruct((1, model.img_size, model.img_size, model.in_chans), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)['params']


def check_state_dict(state_dict: Mapping[str, np.ndarray], table: Mapping[str, Entry],
                     source: str = 'checkpoint', model_name: str = 'the model') -> None:
  """Raises CheckpointMismatchError naming every missing, unexpected and misshaped key."""
  state_dicts.check_state_dict(
      state_dict, table, source=source, model_name=model_name, names='official VMamba names',
      explain=lambda key: next((h for p, h in _FOREIGN_KEY_HINTS if re.search(p, key)), ''),
      advice="Check the variant (dims, depths, ssm_ratio, d_state, num_classes) against the "
             "checkpoint's config.")


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], param_shapes: Mapping[str, Any],
                           *, dtype=None, source: str = 'checkpoint',
                           model_name: str = 'the model') -> dict[str, Any]:
  """Strictly converts an official state_dict to the Flax params tree (jax arrays)."""
  table = key_table(param_shapes)
  check_state_dict(state_dict, table, source, model_name)
  return state_dicts.params_from_checked(state_dict, table, source=source, dtype=dtype)


def state_dict_from_params(params: Mapping[str, Any], dtype=None) -> dict[str, np.ndarray]:
  """Official-named, torch-laid-out, contiguous numpy arrays for a Flax VMamba params tree."""
  return state_dicts.state_dict_from(params, key_table(params), dtype)


def _model_name(model) -> str:
  fields = ('dims', 'depths', 'd_state', 'ssm_ratio', 'num_classes')
  return 'VMamba(' + ', '.join(f'{f}={getattr(model, f)}' for f in fields) + ')'


def params_from_file(path: str | os.PathLike, model, *, key: Optional[str] = 'model',
                     dtype=None) -> dict[str, Any]:
  """Official `.pth` (training-script dict or bare state_dict) or `.safetensors` -> params.

  key: 'model' or 'model_ema' (both are in the released training checkpoints).
  """
  return params_from_state_dict(hustvl_keys.read_state_dict(path, key), model_param_shapes(model),
                                dtype=dtype, source=os.fspath(path), model_name=_model_name(model))


def export_safetensors(params: Mapping[str, Any], path: str | os.PathLike, dtype=None) -> None:
  """Writes params under the official names and layouts (loadable by the official VSSM)."""
  metadata = {'format': 'pt', 'producer': 'ouromamba_jax', 'layout': 'mzeromiko-vmamba-v2'}
  safetensors_io.write_safetensors(state_dict_from_params(params, dtype), path, metadata)

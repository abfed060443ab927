"""Official MambaVision (NVlabs/MambaVision) state-dict names and layouts <-> our Flax
`MambaVision` param tree, loaded strictly.

Names: our paths are the official ones with numbered members joined by '_'
(`levels_2/blocks_3/mixer/in_proj/kernel` is `levels.2.blocks.3.mixer.in_proj.weight`,
`patch_embed/conv_down_3` is `patch_embed.conv_down.3`, `levels_0/downsample/reduction_0` is
`levels.0.downsample.reduction.0`); the mixer's depthwise conv kernels are leaves
(`mixer/conv1d_x` is `mixer.conv1d_x.weight`).

Layouts: Linear (out, in) <-> kernel (in, out); Conv2d OIHW <-> HWIO; depthwise Conv1d
(C, 1, K) <-> (K, C); norms, BatchNorm running statistics, A_log, D, gamma_* as is.

BatchNorm's `num_batches_tracked` (an int64 counter; only used by momentum=None, which
MambaVision does not use) is dropped on import and not written on export (torch's
`load_state_dict` accepts it missing).

Released checkpoints are timm `CheckpointSaver` dicts (`mambavision_tiny_1k.pth.tar`:
'state_dict', 'state_dict_ema', 'optimizer', an argparse 'args', ...); `key` picks
'state_dict' or 'state_dict_ema'. Every missing, unexpected or misshaped key is reported in ONE
CheckpointMismatchError.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

from flax import traverse_util
import numpy as np

from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.io import safetensors_io
from ouromamba_jax.io import state_dicts
from ouromamba_jax.io import vmamba_keys
from ouromamba_jax.io.hustvl_keys import AS_IS, CONV1D, CONV2D, LINEAR, Entry

_NUMBERED = re.compile(r'^(levels|blocks|conv_down|reduction)_(\d+)$')
_LINEAR_MODULES = frozenset({'in_proj', 'x_proj', 'dt_proj', 'out_proj', 'qkv', 'proj', 'fc1',
                             'fc2', 'head'})
_CONV2D_MODULES = re.compile(r'^(conv_down_\d+|conv[12]|reduction_0)$')
_CONV1D_LEAVES = frozenset({'conv1d_x', 'conv1d_z'})
BN_COUNTER = 'num_batches_tracked'

_FOREIGN_KEY_HINTS = (
    (r'^module\.', "saved from a DistributedDataParallel wrapper: strip the 'module.' prefix"),
    (r'^model\.', "a Hugging Face transformers checkpoint (MambaVisionModel): strip 'model.'"),
    (r'\.gamma(_[12])?$', 'a layer scale: the checkpoint is another variant (B/L use '
                          'layer_scale, T/T2/S do not)'),
    (r'\.(q|k)_norm\.', 'qk_norm LayerNorms (qk_scale=True); the released models have none'),
    (r'\.conv1d_[xz]\.bias$', 'a conv1d bias; the released mixers have none'),
)


def official_key(path: tuple[str, ...]) -> str:
  """('levels_2', 'blocks_0', 'mixer', 'in_proj', 'kernel') -> 'levels.2.blocks.0.mixer.in_proj.weight'."""
  parts = [_NUMBERED.sub(r'\1.\2', p) for p in path]
  if parts[-1] == 'kernel':
    parts[-1] = 'weight'
  elif parts[-1] in _CONV1D_LEAVES:
    parts.append('weight')
  return '.'.join(parts)


def layout_for(path: tuple[str, ...]):
  if path[-1] in _CONV1D_LEAVES:
    return CONV1D
  if path[-1] != 'kernel':
    return AS_IS
  module = path[-2]
  if module in _LINEAR_MODULES:
    return LINEAR
  if _CONV2D_MODULES.match(module):
    return CONV2D
  raise ValueError(f'no MambaVision layout is known for the kernel at {"/".join(path)}')


def key_table(param_shapes: Mapping[str, Any]) -> dict[str, Entry]:
  """{official key: Entry} for a Flax MambaVision param tree of arrays or ShapeDtypeStructs."""
  return {official_key(path): Entry(path, layout_for(path), tuple(leaf.shape), leaf.dtype)
          for path, leaf in traverse_util.flatten_dict(state_dicts.unwrap(param_shapes)).items()}


model_param_shapes = vmamba_keys.model_param_shapes


def drop_bn_counters(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state_dict without BatchNorm's integer `num_batches_tracked` scalars."""
  kept = {}
  for key, value in state_dict.items():
    if key.endswith('.' + BN_COUNTER) and np.asarray(value).size == 1 and \
        np.issubdtype(np.asarray(value).dtype, np.integer):
      continue
    kept[key] = value
  return kept


def check_state_dict(state_dict: Mapping[str, np.ndarray], table: Mapping[str, Entry],
                     source: str = 'checkpoint', model_name: str = 'the model') -> None:
  """Raises CheckpointMismatchError naming every missing, unexpected and misshaped key."""
  state_dicts.check_state_dict(
      state_dict, table, source=source, model_name=model_name,
      names='official MambaVision names',
      explain=lambda key: next((h for p, h in _FOREIGN_KEY_HINTS if re.search(p, key)), ''),
      advice='Check the variant (dim, in_dim, depths, num_heads, layer_scale, num_classes) '
             'against the checkpoint.')


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], param_shapes: Mapping[str, Any],
                           *, dtype=None, source: str = 'checkpoint',
                           model_name: str = 'the model') -> dict[str, Any]:
  """Strictly converts an official state_dict to the Flax params tree (jax arrays)."""
  table = key_table(param_shapes)
  state_dict = drop_bn_counters(state_dict)
  check_state_dict(state_dict, table, source, model_name)
  return state_dicts.params_from_checked(state_dict, table, source=source, dtype=dtype)


def state_dict_from_params(params: Mapping[str, Any], dtype=None) -> dict[str, np.ndarray]:
  """Official-named, torch-laid-out, contiguous numpy arrays for a Flax MambaVision params tree."""
  return state_dicts.state_dict_from(params, key_table(params), dtype)


def _model_name(model) -> str:
  fields = ('dim', 'in_dim', 'depths', 'num_heads', 'layer_scale', 'num_classes')
  return 'MambaVision(' + ', '.join(f'{f}={getattr(model, f)}' for f in fields) + ')'


def params_from_file(path: str | os.PathLike, model, *, key: Optional[str] = 'state_dict',
                     dtype=None) -> dict[str, Any]:
  """Official `.pth.tar` (training-script dict or bare state_dict) or `.safetensors` -> params.

  key: 'state_dict' or 'state_dict_ema' (both are in the training-script checkpoints).
  """
  return params_from_state_dict(hustvl_keys.read_state_dict(path, key), model_param_shapes(model),
                                dtype=dtype, source=os.fspath(path), model_name=_model_name(model))


def export_safetensors(params: Mapping[str, Any], path: str | os.PathLike, dtype=None) -> None:
  """Writes params under the official names and layouts (loadable by the official model)."""
  metadata = {'format': 'pt', 'producer': 'ouromamba_jax', 'layout': 'nvlabs-mambavision'}
  safetensors_io.write_safetensors(state_dict_from_params(params, dtype), path, metadata)

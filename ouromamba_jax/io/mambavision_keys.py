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

import re
from typing import Mapping

import numpy as np

from ouromamba_jax.io import families
from ouromamba_jax.io import state_dicts

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
  key = state_dicts.torch_key(path, _NUMBERED)
  return key + '.weight' if path[-1] in _CONV1D_LEAVES else key


def layout_for(path: tuple[str, ...]):
  if path[-1] in _CONV1D_LEAVES:
    return state_dicts.CONV1D
  return families.kernel_layout(path, 'MambaVision', _LINEAR_MODULES.__contains__,
                                _CONV2D_MODULES.match)


def drop_bn_counters(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The state_dict without BatchNorm's integer `num_batches_tracked` scalars."""
  kept = {}
  for key, value in state_dict.items():
    value = np.asarray(value)
    if not (key.endswith('.' + BN_COUNTER) and value.size == 1 and
            np.issubdtype(value.dtype, np.integer)):
      kept[key] = value
  return kept


FAMILY = families.Family(
    label='official MambaVision', official_key=official_key, layout_for=layout_for,
    hints=_FOREIGN_KEY_HINTS,
    advice='Check the variant (dim, in_dim, depths, num_heads, layer_scale, num_classes) '
           'against the checkpoint.',
    model_fields=('dim', 'in_dim', 'depths', 'num_heads', 'layer_scale', 'num_classes'),
    layout='nvlabs-mambavision', default_key='state_dict', prepare=drop_bn_counters)
key_table = FAMILY.key_table
model_param_shapes = families.model_param_shapes
params_from_state_dict = FAMILY.params_from_state_dict
# key: 'state_dict' or 'state_dict_ema' (both are in the training-script checkpoints).
params_from_file = FAMILY.params_from_file
export_safetensors = FAMILY.export_safetensors

"""hustvl Vim state-dict names and layouts <-> our Flax param tree, loaded strictly.

Our param paths mirror hustvl's names (`layers_3/mixer/in_proj/kernel` is
`layers.3.mixer.in_proj.weight`), so the map is a naming rule plus a layout per module kind:

  torch Linear weight (out, in)          <-> kernel (in, out)
  depthwise Conv1d weight (Di, 1, K)     <-> kernel (K, Di)
  patch Conv2d weight (D, C, p, p) OIHW  <-> kernel (p, p, C, D) HWIO
  everything else (biases, norms, A_log, D, cls_token, pos_embed) is stored as is.

Loading is strict, unlike the official quant code (`strict=False`, which hides a silently
missing key): the expected keys come from `jax.eval_shape(model.init)` and any missing,
unexpected or wrongly shaped key fails in ONE error that lists them all.
"""
from __future__ import annotations

import re
from typing import Mapping

from ouromamba_jax.io import families
from ouromamba_jax.io import state_dicts

_NUMBERED = re.compile(r'^(layers)_(\d+)$')
_LINEAR_MODULES = frozenset(
    {'in_proj', 'out_proj', 'x_proj', 'x_proj_b', 'dt_proj', 'dt_proj_b', 'head'})
_CONV1D_MODULES = frozenset({'conv1d', 'conv1d_b'})
_PATCH_CONV = ('patch_embed', 'proj')

# Keys some Vim checkpoints carry that these models (midclstok, bimamba v2, RMSNorm, no rope,
# no layer scale) never have. They are errors, not silently dropped: each means the checkpoint
# belongs to another architecture and the logits would be wrong.
_FOREIGN_KEY_HINTS = (
    (r'^module\.', "saved from a DistributedDataParallel wrapper: strip the 'module.' prefix"),
    (r'\.gamma$', 'layer scale (init_layer_scale); the midclstok Vim models have none'),
    (r'^head_dist\.|^dist_token$', 'distillation head/token; not part of these Vim models'),
    (r'^rope\.', 'rotary position buffers (if_rope=True); these models use abs pos_embed'),
    (r'(norm|norm_f)\.bias$', 'a LayerNorm bias; these models use RMSNorm (no bias)'),
    (r'\.A_log_b$', "hustvl names the backward log-A 'A_b_log'"),
)


def hustvl_key(path: tuple[str, ...]) -> str:
  """('layers_3', 'mixer', 'in_proj', 'kernel') -> 'layers.3.mixer.in_proj.weight'."""
  return state_dicts.torch_key(path, _NUMBERED)


def layout_for(path: tuple[str, ...]) -> state_dicts.Layout:
  if path[-1] != 'kernel':
    return state_dicts.AS_IS
  module = path[-2] if len(path) > 1 else ''
  if module in _LINEAR_MODULES:
    return state_dicts.LINEAR
  if module in _CONV1D_MODULES:
    return state_dicts.CONV1D
  if tuple(path[-3:-1]) == _PATCH_CONV:
    return state_dicts.CONV2D
  raise ValueError(f'no hustvl layout is known for the kernel at {"/".join(path)}; add its '
                   'module to ouromamba_jax/io/hustvl_keys.py')


def _block_beyond_depth(key: str, table: Mapping[str, state_dicts.Entry]) -> str:
  """The hint for a block index the model does not have."""
  depth = sum(1 for k in table if re.fullmatch(r'layers\.\d+\.norm\.weight', k))
  match = re.match(r'^layers\.(\d+)\.', key)
  if match and int(match.group(1)) >= depth:
    return f'block {match.group(1)} is beyond the model depth ({depth})'
  return ''


FAMILY = families.Family(
    label='hustvl', official_key=hustvl_key, layout_for=layout_for, hints=_FOREIGN_KEY_HINTS,
    advice='Check that the model variant, img_size, patch_size, depth and num_classes match '
           'the checkpoint (pos_embed is not interpolated).',
    model_fields=('img_size', 'patch_size', 'd_model', 'depth', 'd_state', 'num_classes'),
    layout='hustvl-vim', default_key='model', hint_from_table=_block_beyond_depth)
key_table = FAMILY.key_table
model_param_shapes = families.model_param_shapes
params_from_state_dict = FAMILY.params_from_state_dict
state_dict_from_params = FAMILY.state_dict_from_params
# key: 'model' or 'model_ema' (the entry of a training-script checkpoint holding the weights).
params_from_file = FAMILY.params_from_file
export_safetensors = FAMILY.export_safetensors

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

import re

from ouromamba_jax.io import families
from ouromamba_jax.io import state_dicts

_RENAMES = (
    (r'^patch_embed\.conv_in\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm_in\.', 'patch_embed.2.'),
    (r'^patch_embed\.conv_out\.', 'patch_embed.5.'),
    (r'^patch_embed\.norm_out\.', 'patch_embed.7.'),
    (r'\.downsample\.conv\.', '.downsample.1.'),
    (r'\.downsample\.norm\.', '.downsample.3.'),
    (r'^classifier_(norm|head)\.', r'classifier.\1.'),
)
_NUMBERED = re.compile(r'^(layers|blocks)_(\d+)$')
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
  key = state_dicts.torch_key(path, _NUMBERED)
  for pattern, replacement in _RENAMES:
    key = re.sub(pattern, replacement, key)
  return key


def layout_for(path: tuple[str, ...]):
  return families.kernel_layout(path, 'VMamba', _LINEAR_MODULES.__contains__,
                                _CONV_MODULES.__contains__)


FAMILY = families.Family(
    label='official VMamba', official_key=official_key, layout_for=layout_for,
    hints=_FOREIGN_KEY_HINTS,
    advice="Check the variant (dims, depths, ssm_ratio, d_state, num_classes) against the "
           "checkpoint's config.",
    model_fields=('dims', 'depths', 'd_state', 'ssm_ratio', 'num_classes'),
    layout='mzeromiko-vmamba-v2', default_key='model')
key_table = FAMILY.key_table
model_param_shapes = families.model_param_shapes
params_from_state_dict = FAMILY.params_from_state_dict
# key: 'model' or 'model_ema' (both are in the released training checkpoints).
params_from_file = FAMILY.params_from_file
export_safetensors = FAMILY.export_safetensors

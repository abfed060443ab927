"""Model variants by name (big_vision style registry).

Each variant is a model class (Vim's `VisionMamba`, `VMamba`, `MambaVision`) with a dict of
its fields; `build_model(name, **overrides)` lets any field be changed (image size, classes,
depth, ...).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from ouromamba_jax.models.mambavision import MambaVision
from ouromamba_jax.models.vim import VisionMamba
from ouromamba_jax.models.vmamba import VMamba

# The fields that decide a model's architecture (and so its checkpoint), per class.
ARCH_FIELDS = {
    VisionMamba: ('img_size', 'patch_size', 'in_chans', 'num_classes', 'd_model', 'depth',
                  'd_state', 'expand', 'dt_rank'),
    VMamba: ('patch_size', 'in_chans', 'num_classes', 'dims', 'depths', 'd_state', 'ssm_ratio',
             'dt_rank', 'd_conv', 'conv_bias', 'mlp_ratio'),
    MambaVision: ('in_chans', 'num_classes', 'dim', 'in_dim', 'depths', 'num_heads',
                  'window_size', 'mlp_ratio', 'qkv_bias', 'layer_scale', 'layer_scale_conv',
                  'd_state', 'd_conv', 'expand', 'stem_strides'),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  model_cls: type
  fields: dict[str, Any]


VARIANTS: dict[str, Variant] = {}


def register_variant(name: str, model_cls: type = VisionMamba, **fields) -> None:
  if name in VARIANTS:
    raise ValueError(f'model variant {name!r} is already registered')
  VARIANTS[name] = Variant(model_cls, fields)


def variant_names() -> list[str]:
  return sorted(VARIANTS)


def build_model(name: str, **overrides):
  """Builds a registered variant; `overrides` replace any of its fields."""
  if name not in VARIANTS:
    raise ValueError(f'unknown model variant {name!r}; registered: {", ".join(variant_names())}')
  variant = VARIANTS[name]
  unknown = set(overrides) - set(variant.model_cls.__dataclass_fields__)
  if unknown:
    raise ValueError(f'unknown {variant.model_cls.__name__} fields {sorted(unknown)} for '
                     f'variant {name!r}')
  return variant.model_cls(**{**variant.fields, **overrides})


def architecture(model) -> dict[str, Any]:
  """img_size and the architecture fields of `model`'s class, JSON-normalised (tuples become
  lists), so that a record read back from JSON compares equal."""
  fields = sorted({'img_size', *ARCH_FIELDS[type(model)]})
  return json.loads(json.dumps({f: getattr(model, f) for f in fields}))


def variant_of(model) -> str | None:
  """The registered variant `model` is an instance of (same class, architecture fields equal),
  or None."""
  arch = ARCH_FIELDS.get(type(model), ())
  for name in variant_names():
    if VARIANTS[name].model_cls is type(model):
      reference = build_model(name)
      if all(getattr(reference, f) == getattr(model, f) for f in arch):
        return name
  return None


_VIM_224 = dict(img_size=224, patch_size=16, depth=24, d_state=16, expand=2, num_classes=1000)
register_variant('vim_t', d_model=192, **_VIM_224)
register_variant('vim_s', d_model=384, **_VIM_224)
register_variant('vim_b', d_model=768, **_VIM_224)
# The testbed: Vim-T width and depth on 32x32 CIFAR-10, patch 4 -> 64 patches + cls = 65 tokens.
register_variant('vim_t_cifar10', d_model=192, depth=24, d_state=16, expand=2, img_size=32,
                 patch_size=4, num_classes=10)

# The released VMamba v2 classifiers (official README / configs/vssm; ImageNet-1K top-1):
# T = vmambav2v_tiny_224 (vssm1_tiny_0230s, 82.6), S = vmambav2_small_224 (83.6),
# B = vmambav2_base_224 (vssm_base_0229, 83.9: the paper's VMamba-B FP).
_VMAMBA_224 = dict(img_size=224, patch_size=4, d_state=1, d_conv=3, conv_bias=False,
                   mlp_ratio=4.0, num_classes=1000)
register_variant('vmamba_t', VMamba, dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, **_VMAMBA_224)
register_variant('vmamba_s', VMamba, dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, **_VMAMBA_224)
register_variant('vmamba_b', VMamba, dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, **_VMAMBA_224)
# Testbed (bundled, 80.9 % top-1 on CIFAR-10): the released block recipe, 3 stages on 32x32 (grids 8, 4, 2),
# 6.2 M params = 12.3 MB in bf16.
register_variant('vmamba_t_cifar10', VMamba, dims=64, depths=(2, 2, 6), ssm_ratio=2.0,
                 img_size=32, patch_size=4, d_state=1, d_conv=3, conv_bias=False, mlp_ratio=4.0,
                 num_classes=10)

# The released MambaVision classifiers (official `mamba_vision_T`/`_B`, README: T 31.8M params,
# 82.3 top-1; B 97.7M, 84.2: the paper's MambaVision-B FP). Hybrid stages 3-4 hold 14x14 and
# 7x7 grids at 224, one window each.
_MAMBAVISION_224 = dict(img_size=224, num_heads=(2, 4, 8, 16), window_size=(8, 8, 14, 7),
                        mlp_ratio=4.0, num_classes=1000)
register_variant('mambavision_t', MambaVision, dim=80, in_dim=32, depths=(1, 3, 8, 4),
                 **_MAMBAVISION_224)
register_variant('mambavision_b', MambaVision, dim=128, in_dim=64, depths=(3, 3, 10, 5),
                 layer_scale=1e-5, **_MAMBAVISION_224)
# Testbed (bundled, 86.7 % top-1 on CIFAR-10): T's depths and heads at width 32 (head dim 16 everywhere) on
# 32x32 with a stride-1 stem, so the stages hold 32, 16, 8, 4 grids; the hybrid stages are one
# window each (8x8 = 64 tokens, as Vim's testbed; 4x4). 5.0 M params = 10 MB in bf16.
register_variant('mambavision_t_cifar10', MambaVision, dim=32, in_dim=32, depths=(1, 3, 8, 4),
                 num_heads=(2, 4, 8, 16), window_size=(8, 8, 8, 4), mlp_ratio=4.0,
                 stem_strides=(1, 1), img_size=32, num_classes=10)

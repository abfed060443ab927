"""Model variants by name (big_vision style registry).

Each variant is a dict of `VisionMamba` fields; `build_model(name, **overrides)` lets image
size, patch size, classes, depth and width be changed freely.
"""
from __future__ import annotations

from typing import Any

from ouromamba_jax.models.vim import VisionMamba

VARIANTS: dict[str, dict[str, Any]] = {}


def register_variant(name: str, **fields) -> None:
  if name in VARIANTS:
    raise ValueError(f'model variant {name!r} is already registered')
  VARIANTS[name] = fields


def variant_names() -> list[str]:
  return sorted(VARIANTS)


def build_model(name: str, **overrides) -> VisionMamba:
  """Builds a registered variant; `overrides` replace any of its fields."""
  if name not in VARIANTS:
    raise ValueError(f'unknown model variant {name!r}; registered: {", ".join(variant_names())}')
  unknown = set(overrides) - set(VisionMamba.__dataclass_fields__)
  if unknown:
    raise ValueError(f'unknown VisionMamba fields {sorted(unknown)} for variant {name!r}')
  return VisionMamba(**{**VARIANTS[name], **overrides})


def variant_of(model) -> str | None:
  """The registered variant `model` is an instance of (architecture fields equal), or None."""
  arch = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'd_model', 'depth', 'd_state',
          'expand', 'dt_rank')
  for name in variant_names():
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

"""Param trees prepared for inference forwards of a known batch size, per model family.

A forward's fastest param layout can depend on its batch: Vim's mixers vmap their two scan
directions below `vim.DIRECTIONS_AS_ONE_BATCH_BELOW` samples on a GPU, and then read their
params stacked, which costs a stack in every forward unless the tree holds them stacked
already. `prepared_for_inference` makes that layout once, where it pays; the logits are the
same. Families without such a layout get their tree back unchanged.
"""
from __future__ import annotations

from typing import Any

from ouromamba_jax.models import vim


def prepared_for_inference(model, params: Any, batch: int) -> Any:
  """`params` laid out for `model`'s inference forwards of `batch` samples per device (see the
  module docstring). For inference only: quantization and Gen need the trees as stored."""
  if batch < 1:
    raise ValueError(f'prepared_for_inference: batch must be >= 1 samples per device, got '
                     f'{batch}.')
  if isinstance(model, vim.VisionMamba):
    return vim.prepared_for_batch(params, batch, model.batch_directions)
  return params

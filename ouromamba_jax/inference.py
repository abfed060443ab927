"""Param trees prepared for inference forwards of a known batch size.

Two things a served forward should not redo on every call: quantizing the parameter-only
activation sites (A and D: `quant.fold_parameter_sites` evaluates them once), and, for Vim on a
GPU below `vim.DIRECTIONS_AS_ONE_BATCH_BELOW` samples, stacking each mixer's two scan
directions' params for the vmapped directions (`vim.prepared_for_batch`). Both give the same
logits bit for bit; both are for inference only (calibration, Gen, saving and reports take the
tree as stored).
"""
from __future__ import annotations

from typing import Any

from ouromamba_jax.models import vim
from ouromamba_jax.quant import fold


def prepared_for_inference(model, params: Any, batch: int) -> Any:
  """`params` laid out for `model`'s inference forwards of `batch` samples per device (see the
  module docstring); a float tree only gets the layout, a prepared tree comes back as it is."""
  if batch < 1:
    raise ValueError(f'prepared_for_inference: batch must be >= 1 samples per device, got '
                     f'{batch}.')
  folded = fold.fold_parameter_sites(params)
  if isinstance(model, vim.VisionMamba):
    return vim.prepared_for_batch(folded, batch, model.batch_directions)
  return folded

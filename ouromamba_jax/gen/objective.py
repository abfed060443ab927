"""The Gen objective: per-image L = w_C·L_C + w_PSE·L_PSE + λ·L_O from one model forward.

The state losses are computed *inside* the model's `state_feature_fn` hook, per block and scan
direction, and only their per-image values (B,) are sown into 'intermediates'. So the
(B, L, Di, N) states of a block are never kept beyond that block, and with `remat` they are
recomputed in the backward pass instead of being stored for all blocks. The model families
differ only in the hook's inputs and where it sows (VMamba's SS2D: `gen.ss2d`; MambaVision's
windowed mixers: `gen.windows`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas.patched_readout import api as readout_api
from ouromamba_jax.gen import losses
from ouromamba_jax.gen import patched_state
from ouromamba_jax.gen import ss2d
from ouromamba_jax.gen import windows
from ouromamba_jax.gen.spec import GenSpec
from ouromamba_jax.models.mambavision import MambaVision
from ouromamba_jax.models.vmamba import VMamba

LOSS_NAMES = ('total', 'contrastive', 'pse', 'output')
# The hook takes the states in the scan kernel's (B, L, N, D) layout and, for the backward
# direction, in scan order (not flipped). The Pallas readout (the GPU default) reads them as
# they are, forward and backward; the XLA readout flips and transposes them to (B, L, D, N) in
# token order itself (and its gradient back).
STATES_LAYOUT = 'blnd'


def _family(model):
  """The Gen module of a model without a class token (its hook, blocks and where it sows), or
  None for Vim (handled here)."""
  if isinstance(model, VMamba):
    return ss2d
  if isinstance(model, MambaVision):
    return windows
  return None


def check_objective(spec: GenSpec, model) -> None:
  """Clear errors for settings the model cannot satisfy (before anything is traced)."""
  if spec.neighbourhood < 1 or spec.neighbourhood % 2 == 0:
    raise ValueError(f'gen.neighbourhood must be odd (1, 3, 5, ...), got {spec.neighbourhood}')
  if spec.state_weighting not in patched_state.WEIGHTINGS:
    raise ValueError(f'gen.state_weighting must be one of {patched_state.WEIGHTINGS}, '
                     f'got {spec.state_weighting!r}')
  if spec.delta_normalization not in patched_state.DELTA_NORMALIZATIONS:
    raise ValueError(f'gen.delta_normalization must be one of '
                     f'{patched_state.DELTA_NORMALIZATIONS}, got {spec.delta_normalization!r}')
  if spec.feature not in patched_state.FEATURES:
    raise ValueError(f'gen.feature must be one of {patched_state.FEATURES}, got {spec.feature!r}')
  if spec.readout_implementation not in ('',) + readout_api.IMPLEMENTATIONS:
    raise ValueError(f'gen.readout_implementation must be \'\' (the default: triton on GPU, '
                     f'else xla) or one of {readout_api.IMPLEMENTATIONS}, got '
                     f'{spec.readout_implementation!r}')
  if spec.feature == 'state' and spec.readout_implementation == 'triton':
    raise ValueError("gen.readout_implementation='triton' needs gen.feature='readout': the "
                     "'state' feature (flat h_p) is computed in XLA only; set "
                     "gen.readout_implementation='' or 'xla'.")
  if spec.output_loss not in losses.OUTPUT_LOSSES:
    raise ValueError(f'gen.output_loss must be one of {losses.OUTPUT_LOSSES}, '
                     f'got {spec.output_loss!r}')
  if spec.temperature <= 0:
    raise ValueError(f'gen.temperature must be > 0, got {spec.temperature}')
  if spec.pse_weight and (spec.pse_bandwidth <= 0 or spec.pse_grid_points < 2):
    raise ValueError(f'gen.pse_bandwidth must be > 0 and gen.pse_grid_points >= 2 for L_PSE, '
                     f'got {spec.pse_bandwidth} and {spec.pse_grid_points}')
  if not (spec.uses_states or spec.output_weight):
    raise ValueError('all loss weights are 0 (gen.contrastive_weight, gen.pse_weight, '
                     'gen.output_weight); enable at least one loss.')
  if spec.contrastive_weight and spec.num_positives < 1:
    raise ValueError(f'gen.num_positives must be >= 1, got {spec.num_positives}')
  family = _family(model)
  if family is not None:
    if spec.uses_states:
      if spec.readout_implementation == 'triton':
        raise ValueError("gen.readout_implementation='triton' is Vim's kernel (it expects a "
                         f"class token); {type(model).__name__}'s features run in XLA: set it "
                         "to '' or 'xla'.")
      family.loss_blocks(model, spec)      # raises when no (chosen) block fits
    return
  if spec.contrastive_weight and not spec.num_positives <= model.num_patches - 2:
    raise ValueError(f'gen.num_positives={spec.num_positives} must be in [1, num_patches - 2 = '
                     f'{model.num_patches - 2}] for this model (each anchor needs a negative).')
  bad = [b for b in spec.loss_blocks if not 0 <= b < model.depth]
  if bad:
    raise ValueError(f'gen.loss_blocks {bad} are out of range for a {model.depth}-block model.')


def feature_losses(spec: GenSpec):
  """Patch features (B, P, F) -> {'contrastive', 'pse'} per row (B,), the enabled terms."""
  def state_losses(feats):
    out = {}
    if spec.contrastive_weight:
      out['contrastive'] = losses.patch_contrastive_loss(feats, spec.num_positives,
                                                         spec.temperature)
    if spec.pse_weight:
      out['pse'] = -losses.patch_similarity_entropy(feats, spec.pse_bandwidth,
                                                    spec.pse_grid_points)
    return out
  return state_losses


def make_state_feature_fn(spec: GenSpec, cls_index: int, grid_size: tuple[int, int]):
  """The Vim hook: (states, delta, C) of one block/direction -> {'contrastive', 'pse'}: (B,)."""
  state_losses = feature_losses(spec)

  def hook(states, delta, c_mat, reversed_tokens=False):
    return state_losses(patched_state.patch_features(
        states, delta, c_mat, cls_index=cls_index, grid_size=grid_size,
        neighbourhood=spec.neighbourhood, weighting=spec.state_weighting,
        normalization=spec.delta_normalization, feature=spec.feature,
        implementation=spec.readout_implementation or None, states_layout=STATES_LAYOUT,
        reversed_tokens=reversed_tokens))
  return hook


def generation_model(model, spec: GenSpec):
  """The classifier with the loss hook installed (or as is when no state loss is on).

  spec.scan_implementation: '' keeps the model's scan; a name overrides it for Gen only (with
  the hook, every state is returned, so the fused Triton kernel falls back to the XLA scan).
  """
  fields = {'remat': spec.remat}
  if spec.scan_implementation:
    fields['scan_implementation'] = spec.scan_implementation
  if spec.uses_states:
    family = _family(model)
    if family is not None:    # the family's hook on the blocks that fit (`family.loss_blocks`)
      fields['state_feature_fn'] = family.make_feature_fn(spec, feature_losses(spec))
      fields['state_blocks'] = family.loss_blocks(model, spec)
    else:
      fields['state_feature_fn'] = make_state_feature_fn(spec, model.cls_index, model.grid_size)
      fields['state_layout'] = STATES_LAYOUT
      fields['state_order'] = 'scan'
  return model.clone(**fields)


def _block_values(model, intermediates: dict[str, Any], block: int, name: str) -> jax.Array:
  """One block's per-image `name` loss: Vim's mean over its two scan directions (VMamba's
  hook already averaged its four; a MambaVision mixer scans one)."""
  if _family(model) is not None:
    return _family(model).block_values(model, intermediates, block, name)
  mixer = intermediates[f'layers_{block}']['mixer']
  values = [mixer[f'state_features_{d}'][0][name] for d in ('forward', 'backward')]
  return (values[0] + values[1]) / 2


def per_image_losses(gen_model, params, images, labels, spec: GenSpec) -> dict[str, jax.Array]:
  """Runs the hooked model once; returns LOSS_NAMES -> (B,) fp32 (disabled terms are zeros).

  L_C is averaged over the selected blocks; L_PSE is summed over them, as in PSAQ-ViT.
  """
  if spec.uses_states:
    logits, state = gen_model.apply({'params': params}, images, mutable=['intermediates'])
    inter = state['intermediates']
  else:
    logits, inter = gen_model.apply({'params': params}, images), None
  zeros = jnp.zeros(images.shape[:1], jnp.float32)
  blocks = (gen_model.state_blocks if _family(gen_model) is not None
            else spec.blocks(gen_model.depth))
  value = lambda b, name: _block_values(gen_model, inter, b, name)
  out = {'contrastive': zeros, 'pse': zeros}
  if spec.contrastive_weight:
    out['contrastive'] = sum(value(b, 'contrastive') for b in blocks) / len(blocks)
  if spec.pse_weight:
    out['pse'] = sum(value(b, 'pse') for b in blocks)
  out['output'] = losses.output_loss(logits, labels, spec.output_loss)
  out['total'] = (spec.contrastive_weight * out['contrastive'] + spec.pse_weight * out['pse']
                  + spec.output_weight * out['output'])
  return out

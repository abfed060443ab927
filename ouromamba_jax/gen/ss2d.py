"""OuroMamba-Gen's patch-level state losses on VMamba's SS2D (the paper defines them for Vim).

Which states: in every selected VSS block, the SSM states h (Di x N per token) of each of the
four scan directions, with that direction's Δ (after softplus) as the weights and its C for the
readout, exactly as Vim's two directions (`gen.objective`).
Where they go: a direction scans the H x W grid row-major, column-major or either reversed, so
its token t is a different cell in each; `models.vmamba.directions_to_grid` un-permutes every
direction back to row-major cells (the inverse of `cross_scan`, no sum), so the p x p
neighbourhood of a cell is a true 2-D neighbourhood in every direction, and the Δ-weighted
box sum h_p, the readout C·h_p and the per-image InfoNCE are Vim's (`patched_state`, without a
class token). Each direction gives its own loss; the four are averaged (Vim averages its two),
rather than concatenating the directions per cell, so a direction whose states are large does
not dominate the cosine similarities.
How the stages combine: each stage has its own grid (H/4, H/8, ...), and a block's loss is the
mean over its own grid's patches, so every selected block weighs the same whatever its grid;
L_C is averaged over the selected blocks and L_PSE summed (as for Vim). A block contributes
only if its grid holds a full p x p window (side >= p) and, for L_C, at least K + 2 patches
(K positives and a negative besides the anchor): at 224 with p = 5, K = 12 that is all four
stages (56, 28, 14, 7); on the 32x32 testbed only stage 0 (8 x 8; stages 1-2 are 4 x 4, 2 x 2).
`gen.loss_blocks` picks blocks by their flat index over the stages.
"""
from __future__ import annotations

import jax.numpy as jnp

from ouromamba_jax.gen import block_choice
from ouromamba_jax.gen import patched_state


def block_fits(grid: tuple[int, int], spec) -> bool:
  """Whether a block on `grid` can give the state losses (a p x p window, K + 2 patches)."""
  fits = min(grid) >= spec.neighbourhood
  if spec.contrastive_weight:
    fits = fits and grid[0] * grid[1] >= spec.num_positives + 2
  return fits


def block_grids(model) -> list[tuple[int, int]]:
  """The token grid of every flat block index."""
  grids = model.stage_grids()
  return [grids[stage] for stage, _ in model.block_index()]


def loss_blocks(model, spec) -> tuple[int, ...]:
  """The flat block indices feeding the state losses: gen.loss_blocks, or every block that
  fits (`block_fits`). Raises when none fits or a chosen one does not, saying what to change."""
  grids = block_grids(model)
  window = f'{spec.neighbourhood}x{spec.neighbourhood} window'
  return block_choice.choose_loss_blocks(
      spec.loss_blocks, len(grids), lambda b: block_fits(grids[b], spec),
      out_of_range=lambda bad: (
          f'gen.loss_blocks {bad} are out of range for a {len(grids)}-block VMamba (flat '
          f'indices over the stages {tuple(model.depths)}).'),
      too_small=lambda small: (
          f'gen.loss_blocks {small} sit on grids {[grids[b] for b in small]}, too small for a '
          f'{window} and {spec.num_positives} positives; pick blocks of an earlier stage or '
          'lower gen.neighbourhood / gen.num_positives.'),
      none_fits=lambda: (
          f'no VMamba stage grid ({model.stage_grids()}) fits a {window} with '
          f'{spec.num_positives} positives; lower gen.neighbourhood or gen.num_positives, or '
          'turn the state losses off (gen.contrastive_weight=0, gen.pse_weight=0).'))


def make_feature_fn(spec, state_losses):
  """The SS2D hook: the four directions' grid-ordered (states, Δ, C) -> {'contrastive', 'pse'}
  per image (B,), each the mean over the directions. `state_losses` maps patch features
  (B', P, F) to that dict per row."""
  def hook(states, delta, c_mat, *, grid_size):
    b, k = states.shape[:2]
    fold = lambda t: t.reshape((b * k,) + t.shape[2:])   # directions as extra images
    feats = patched_state.grid_patch_features(
        fold(states), fold(delta), fold(c_mat), grid_size=grid_size,
        neighbourhood=spec.neighbourhood, weighting=spec.state_weighting,
        normalization=spec.delta_normalization, feature=spec.feature)
    return {name: jnp.mean(v.reshape(b, k), axis=1) for name, v in state_losses(feats).items()}
  return hook


def block_values(model, intermediates, block: int, name: str):
  """One flat block's per-image `name` loss from the hooked forward's intermediates."""
  stage, j = model.block_index()[block]
  return intermediates[f'layers_{stage}'][f'blocks_{j}']['op']['state_features'][0][name]

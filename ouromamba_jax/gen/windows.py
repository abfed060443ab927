"""OuroMamba-Gen's patch-level state losses on MambaVision's windowed mixers (the paper defines
them for Vim; issue 21 item 3).

Which blocks: the SSM mixer blocks of the hybrid stages 3-4 (`MambaVision.mixer_blocks()`: the
first half of each stage; the attention blocks after them have no states, and stages 1-2 are
convolutions). Each mixer scans one direction, so its states h (Di/2 x N per token, the x
branch only: the symmetric z branch has no scan), Δ (after softplus) and C are taken as Vim's
forward direction's, without a class token.
Where they go: a stage's grid is cut into ws x ws windows (`window_partition`) and each window
is scanned on its own, its ws*ws tokens in row-major order, so window token t is the cell
(t // ws, t % ws) of that window: the states reshape straight back onto the window's grid, and
the Δ-weighted p x p box sum h_p, the readout C·h_p are Vim's (`patched_state`), replicate
padding at the window's border.
Windows vs the whole image grid: the neighbourhood stays inside a window, because a window's
states come from a scan that started afresh at its first token and never saw the other
windows (summing across a window border would add states of an unrelated scan, and no state of
the model mixes windows). The Δ weights are normalised per image over all its windows' tokens,
and one InfoNCE runs per image over the patches of all its windows (anchors, positives and
negatives from any window), so an image gives one loss per block whatever its window count, as
Vim and VMamba do. At 224 and on the 32x32 testbed each hybrid stage is a single window (14x14
and 7x7; 8x8 and 4x4), where windows and image grid coincide. A grid that is not whole windows
(the model zero-pads it) is refused: the padded cells would join the neighbourhoods.
How the blocks combine: L_C is averaged over the selected mixers, L_PSE summed (as for Vim).
A mixer contributes only if its window holds a p x p neighbourhood (ws >= p) and, for L_C, its
image grid at least K + 2 patches: at 224 with p = 5, K = 12 that is every mixer of both stages
(14x14, 7x7); on the testbed stage 3's (8x8; stage 4's 4x4 is too small). `gen.loss_blocks`
picks mixers by their index in `mixer_blocks()`. The output loss is Vim's, on the logits.
"""
from __future__ import annotations

from ouromamba_jax.gen import block_choice
from ouromamba_jax.gen import patched_state


def block_fits(model, stage: int, spec) -> bool:
  """Whether stage `stage`'s mixers can give the state losses (whole windows holding a p x p
  neighbourhood, K + 2 patches per image)."""
  ws, (h, w) = model.window_size[stage], model.stage_grids()[stage]
  fits = h % ws == 0 and w % ws == 0 and ws >= spec.neighbourhood
  if spec.contrastive_weight:
    fits = fits and h * w >= spec.num_positives + 2
  return fits


def loss_blocks(model, spec) -> tuple[int, ...]:
  """Indices into `model.mixer_blocks()` feeding the state losses: gen.loss_blocks, or every
  mixer that fits (`block_fits`). Raises when none fits or a chosen one does not."""
  mixers = model.mixer_blocks()
  describe = lambda s: f'{model.stage_grids()[s]} grid in {model.window_size[s]}-wide windows'
  neighbourhood = f'{spec.neighbourhood}x{spec.neighbourhood} neighbourhood'
  return block_choice.choose_loss_blocks(
      spec.loss_blocks, len(mixers), lambda b: block_fits(model, mixers[b][0], spec),
      out_of_range=lambda bad: (
          f'gen.loss_blocks {bad} are out of range for the {len(mixers)} mixer blocks of '
          'MambaVision stages 3-4 (indices into mixer_blocks()).'),
      too_small=lambda small: (
          f'gen.loss_blocks {small} sit on {[describe(mixers[b][0]) for b in small]}, which do '
          f'not give whole windows with a {neighbourhood} and {spec.num_positives} positives; '
          'pick mixers of stage 3 or lower gen.neighbourhood / gen.num_positives.'),
      none_fits=lambda: (
          f'no MambaVision hybrid stage ({", ".join(describe(s) for s in (2, 3))}) gives whole '
          f'windows holding a {neighbourhood} with {spec.num_positives} positives; lower '
          'gen.neighbourhood or gen.num_positives, or turn the state losses off '
          '(gen.contrastive_weight=0, gen.pse_weight=0).'))


def make_feature_fn(spec, state_losses):
  """The mixer hook: one block's per-window (states, Δ, C) -> {'contrastive', 'pse'} per image
  (B,), over all of the image's windows. `state_losses` maps patch features (B', P, F) to that
  dict per row."""
  def hook(states, delta, c_mat, *, grid_size, windows):
    feats = patched_state.grid_patch_features(
        states, delta, c_mat, grid_size=grid_size, neighbourhood=spec.neighbourhood,
        weighting=spec.state_weighting, normalization=spec.delta_normalization,
        feature=spec.feature, weight_groups=windows)
    return state_losses(feats.reshape(feats.shape[0] // windows, -1, feats.shape[-1]))
  return hook


def block_values(model, intermediates, block: int, name: str):
  """One mixer's per-image `name` loss from the hooked forward's intermediates."""
  stage, j = model.mixer_blocks()[block]
  return intermediates[f'levels_{stage}'][f'blocks_{j}']['mixer']['state_features'][0][name]

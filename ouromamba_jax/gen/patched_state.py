"""The Δ-weighted "patched" hidden state h_p and the patch features read out of it.

For a patch token τ on the 2-D patch grid

    h_p(τ) = Σ_{k ∈ N(τ)} w_k · h(k),

where N(τ) is the p×p window of patches centred on τ (replicate padding at the border, so a
border window repeats the edge patches), h(k) ∈ R^{Di×N} is the SSM state at token k and w_k a
scalar from the channel mean of Δ(k) (after softplus), normalised per image over the patch
tokens. Why: Δ ("input gate") is larger on information-rich regions, and summing neighbouring
states lets a token see later tokens in scan order, so the features are less biased by the scan
direction (paper §3, Fig. 3). The class token has no grid position; it is removed at its true
(middle) index before anything else.

Everything is vectorised (`kernels_pallas.patched_readout`): the XLA form weights all states,
then runs a separable box filter over the grid (two small banded matmuls); the Pallas kernel
(the GPU default) does the same separable sum one grid row at a time in registers and reads the
features out directly, never materialising h_p: 2.1x faster than XLA on an H100.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.patched_readout import api as readout_api
from kernels_pallas.patched_readout import reference as readout_ref

WEIGHTINGS = ('delta', 'uniform')
DELTA_NORMALIZATIONS = ('minmax', 'mean', 'none')
FEATURES = ('readout', 'state')

_EPS = 1e-6


def token_weights(delta_patches: jax.Array, weighting: str = 'delta',
                  normalization: str = 'minmax') -> jax.Array:
  """Per-patch weights w (B, P) from Δ (B, P, Di), normalised over the patches of each image.

  normalization (over the P patches of one image, never over the batch, so an image's weights
  do not depend on the other images it is optimised with):
    minmax: (m - min) / (max - min)  -- the official code's choice (it used the batch axis);
            scale-free, so when Δ barely varies over an image (e.g. random weights) the
            weights and their gradients amplify small differences by 1 / (max - min)
    mean:   m / mean(m)              -- keeps every patch, mean weight 1
    none:   m                        -- raw channel mean of Δ
  weighting 'uniform' (the ablation baseline) gives all ones.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f'state_weighting must be one of {WEIGHTINGS}, got {weighting!r}')
  if normalization not in DELTA_NORMALIZATIONS:
    raise ValueError(f'delta_normalization must be one of {DELTA_NORMALIZATIONS}, '
                     f'got {normalization!r}')
  if weighting == 'uniform':
    return jnp.ones(delta_patches.shape[:2], jnp.float32)
  m = jnp.mean(delta_patches.astype(jnp.float32), axis=-1)
  if normalization == 'minmax':
    lo = jnp.min(m, axis=1, keepdims=True)
    hi = jnp.max(m, axis=1, keepdims=True)
    return (m - lo) / jnp.maximum(hi - lo, _EPS)
  if normalization == 'mean':
    return m / jnp.maximum(jnp.mean(m, axis=1, keepdims=True), _EPS)
  return m


def patched_states(states: jax.Array, delta: jax.Array, *, cls_index: int,
                   grid_size: tuple[int, int], neighbourhood: int = 5,
                   weighting: str = 'delta', normalization: str = 'minmax',
                   states_layout: str = 'bldn', reversed_tokens: bool = False) -> jax.Array:
  """h_p for every patch: states (B, L, Di, N) (or (B, L, N, Di) with states_layout 'blnd'; token
  axis backwards with reversed_tokens), delta (B, L, Di) -> (B, P, Di, N) fp32."""
  states = readout_ref.token_order_bldn(states, states_layout, reversed_tokens)
  w = token_weights(readout_ref.drop_class_token(delta, cls_index), weighting, normalization)
  return readout_ref.patched_states(states, w, cls_index=cls_index, grid_size=grid_size,
                                    neighbourhood=neighbourhood)


def patch_features(states: jax.Array, delta: jax.Array, c_mat: jax.Array, *, cls_index: int,
                   grid_size: tuple[int, int], neighbourhood: int = 5,
                   weighting: str = 'delta', normalization: str = 'minmax',
                   feature: str = 'readout', implementation: str | None = None,
                   states_layout: str = 'bldn', reversed_tokens: bool = False) -> jax.Array:
  """Patch features from h_p: 'readout' = C_τ·h_p(τ) (B, P, Di), 'state' = h_p (B, P, Di·N).

  'readout' is what the S6 output would be with h_p in place of h (without the D·u skip and
  the SiLU(z) gate), i.e. the per-patch output of the enhanced implicit attention; it runs
  through `kernels_pallas.patched_readout` (`implementation`: None = the Pallas kernel on
  GPU, which never materialises h_p, and XLA elsewhere; or 'xla' / 'triton'). 'state' returns
  h_p itself, which only the XLA form computes, so it accepts implementation None or 'xla' only.
  """
  if feature not in FEATURES:
    raise ValueError(f'feature must be one of {FEATURES}, got {feature!r}')
  if feature == 'state':
    if implementation not in (None, 'xla'):
      raise ValueError(f"implementation={implementation!r} with feature='state': the flat h_p "
                       "feature is computed in XLA only; pass implementation=None (or 'xla'), "
                       "or use feature='readout' for the Pallas kernel.")
    hp = patched_states(states, delta, cls_index=cls_index, grid_size=grid_size,
                        neighbourhood=neighbourhood, weighting=weighting,
                        normalization=normalization, states_layout=states_layout,
                        reversed_tokens=reversed_tokens)
    return hp.reshape(hp.shape[:2] + (-1,))
  w = token_weights(readout_ref.drop_class_token(delta, cls_index), weighting, normalization)
  return readout_api.patched_readout(states, w, readout_ref.drop_class_token(c_mat, cls_index),
                                     cls_index=cls_index, grid_size=grid_size,
                                     neighbourhood=neighbourhood, states_layout=states_layout,
                                     reversed_tokens=reversed_tokens,
                                     implementation=implementation)


def grid_patch_features(states: jax.Array, delta: jax.Array, c_mat: jax.Array, *,
                        grid_size: tuple[int, int], neighbourhood: int = 5,
                        weighting: str = 'delta', normalization: str = 'minmax',
                        feature: str = 'readout', weight_groups: int = 1) -> jax.Array:
  """The same features for a model without a class token (VMamba, MambaVision): every token is
  a patch.

  states (B, P, Di, N), delta (B, P, Di) after softplus, c_mat (B, P, N), all in row-major grid
  order (P = H*W) -> 'readout' (B, P, Di) or 'state' (B, P, Di·N). XLA only: the Pallas
  readout expects Vim's class token, and these states are small. `weight_groups`: that many
  consecutive rows (MambaVision's windows of one image) share one normalisation of the Δ
  weights; each row's grid is still summed on its own.
  """
  if feature not in FEATURES:
    raise ValueError(f'feature must be one of {FEATURES}, got {feature!r}')
  b, p = states.shape[:2]
  if p != grid_size[0] * grid_size[1]:
    raise ValueError(f'{p} tokens do not fill a {grid_size[0]}x{grid_size[1]} grid; pass the '
                     "grid of the states' stage.")
  w = token_weights(delta.reshape(b // weight_groups, weight_groups * p, -1), weighting,
                    normalization).reshape(b, p)
  weighted = states.astype(jnp.float32) * w[:, :, None, None]
  hp = readout_ref.box_sum(weighted.reshape((b,) + tuple(grid_size) + states.shape[2:]),
                           neighbourhood).reshape(states.shape)
  if feature == 'state':
    return hp.reshape(b, p, -1)
  return jnp.einsum('bpdn,bpn->bpd', hp, c_mat.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)

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

Everything is vectorised: weight all states, then a separable box filter over the grid
(two small banded matmuls, one per grid axis).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WEIGHTINGS = ('delta', 'uniform')
DELTA_NORMALIZATIONS = ('minmax', 'mean', 'none')
FEATURES = ('readout', 'state')

_EPS = 1e-6


def drop_class_token(x: jax.Array, cls_index: int) -> jax.Array:
  """(B, L, ...) -> (B, L-1, ...): patch tokens only, in raster order."""
  return jnp.concatenate([x[:, :cls_index], x[:, cls_index + 1:]], axis=1)


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


def replicate_window_matrix(n: int, size: int) -> np.ndarray:
  """(n, n) matrix M with (M x)_i = Σ_{|o| <= size//2} x[clip(i + o, 0, n - 1)].

  A 1-D box filter with replicate padding as a banded matrix (edge entries count the repeated
  border element several times).
  """
  r = size // 2
  m = np.zeros((n, n), np.float32)
  for offset in range(-r, r + 1):
    np.add.at(m, (np.arange(n), np.clip(np.arange(n) + offset, 0, n - 1)), 1.0)
  return m


def box_sum(grid: jax.Array, size: int) -> jax.Array:
  """Sum over the size×size window around each cell of (B, H, W, ...), replicate-padded.

  Separable: one small matmul along H, one along W. Both are memory-bound passes over the grid
  (contraction length H or W), which XLA runs as plain GEMMs on CPU and GPU; measured ~2x
  faster than pad + lax.reduce_window on CPU, forward and backward.
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f'neighbourhood must be an odd positive size (1, 3, 5, ...), got {size}')
  if size == 1:
    return grid
  _, h, w = grid.shape[:3]
  hi = jax.lax.Precision.HIGHEST  # keep fp32 (no TF32 rounding of the states on GPU)
  rows = jnp.asarray(replicate_window_matrix(h, size))
  cols = jnp.asarray(replicate_window_matrix(w, size))
  out = jnp.einsum('ij,bj...->bi...', rows, grid, precision=hi)
  return jnp.einsum('ij,bhj...->bhi...', cols, out, precision=hi)


def patched_states(states: jax.Array, delta: jax.Array, *, cls_index: int,
                   grid_size: tuple[int, int], neighbourhood: int = 5,
                   weighting: str = 'delta', normalization: str = 'minmax') -> jax.Array:
  """h_p for every patch: states (B, L, Di, N), delta (B, L, Di) -> (B, P, Di, N) fp32."""
  gh, gw = grid_size
  h = drop_class_token(states.astype(jnp.float32), cls_index)
  b, p = h.shape[:2]
  if p != gh * gw:
    raise ValueError(f'states have {p} patch tokens (after removing the class token at '
                     f'{cls_index}) but the patch grid is {gh}x{gw}; pass the model\'s grid_size')
  w = token_weights(drop_class_token(delta, cls_index), weighting, normalization)
  weighted = (h * w[:, :, None, None]).reshape((b, gh, gw) + h.shape[2:])
  return box_sum(weighted, neighbourhood).reshape(h.shape)


def patch_features(states: jax.Array, delta: jax.Array, c_mat: jax.Array, *, cls_index: int,
                   grid_size: tuple[int, int], neighbourhood: int = 5,
                   weighting: str = 'delta', normalization: str = 'minmax',
                   feature: str = 'readout') -> jax.Array:
  """Patch features from h_p: 'readout' = C_τ·h_p(τ) (B, P, Di), 'state' = h_p (B, P, Di·N).

  'readout' is what the S6 output would be with h_p in place of h (without the D·u skip and
  the SiLU(z) gate), i.e. the per-patch output of the enhanced implicit attention.
  """
  if feature not in FEATURES:
    raise ValueError(f'feature must be one of {FEATURES}, got {feature!r}')
  hp = patched_states(states, delta, cls_index=cls_index, grid_size=grid_size,
                      neighbourhood=neighbourhood, weighting=weighting,
                      normalization=normalization)
  if feature == 'state':
    return hp.reshape(hp.shape[:2] + (-1,))
  c_patches = drop_class_token(c_mat, cls_index).astype(jnp.float32)
  return jnp.einsum('bpdn,bpn->bpd', hp, c_patches)

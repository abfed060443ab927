"""XLA reference of the patched readout: f(τ) = C_τ · Σ_{k ∈ N(τ)} w_k h(k).

h(k) ∈ R^{D×N} is the SSM state at patch token k, N(τ) the p×p window of patches around τ with
replicate padding (a border window repeats the edge patches, so an edge patch can count several
times), w (B, P) per-patch weights and C_τ ∈ R^N the readout vector of patch τ. The class token
has no grid position: `states` keep it (at `cls_index`) and it is skipped. This is what
OuroMamba-Gen's patch-feature readout computes for its contrastive
features; it materialises the weighted and box-filtered (B, P, D, N) tensor, which the Pallas
kernel never does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.selective_scan.config import STATES_LAYOUTS  # the layouts the scan hands out


def drop_class_token(x: jax.Array, cls_index: int) -> jax.Array:
  """(B, L, ...) -> (B, L-1, ...): patch tokens only, in raster order."""
  return jnp.concatenate([x[:, :cls_index], x[:, cls_index + 1:]], axis=1)


def token_order_bldn(states: jax.Array, states_layout: str, reversed_tokens: bool) -> jax.Array:
  """States as the reference takes them, (B, L, D, N) in token order, from the scan's 'bldn' or
  'blnd' layout, token axis backwards when `reversed_tokens` (the backward scan's order)."""
  if states_layout not in STATES_LAYOUTS:
    raise ValueError(f'states_layout must be one of {STATES_LAYOUTS} ((B, L, D, N) or '
                     f'(B, L, N, D)), got {states_layout!r}')
  if reversed_tokens:
    states = jnp.flip(states, axis=1)
  return jnp.swapaxes(states, 2, 3) if states_layout == 'blnd' else states


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

  Separable: one small banded matmul along H, one along W.
  """
  check_neighbourhood(size)
  if size == 1:
    return grid
  _, h, w = grid.shape[:3]
  hi = jax.lax.Precision.HIGHEST  # keep fp32 (no TF32 rounding of the states on GPU)
  rows = jnp.asarray(replicate_window_matrix(h, size))
  cols = jnp.asarray(replicate_window_matrix(w, size))
  out = jnp.einsum('ij,bj...->bi...', rows, grid, precision=hi)
  return jnp.einsum('ij,bhj...->bhi...', cols, out, precision=hi)


def check_neighbourhood(size: int) -> None:
  if size < 1 or size % 2 == 0:
    raise ValueError(f'neighbourhood must be an odd positive size (1, 3, 5, ...), got {size}')


def check_grid(num_patches: int, cls_index: int, grid_size: tuple[int, int]) -> None:
  gh, gw = grid_size
  if num_patches != gh * gw:
    raise ValueError(f'states have {num_patches} patch tokens (after removing the class token '
                     f'at {cls_index}) but the patch grid is {gh}x{gw}; pass the model\'s '
                     'grid_size')


def patched_states(states, weights, *, cls_index: int, grid_size: tuple[int, int],
                   neighbourhood: int) -> jax.Array:
  """h_p = box(w · h) for every patch: states (B, L, D, N), weights (B, P) -> (B, P, D, N)."""
  h = drop_class_token(states.astype(jnp.float32), cls_index)
  b, p = h.shape[:2]
  check_grid(p, cls_index, grid_size)
  weighted = (h * weights.astype(jnp.float32)[:, :, None, None]).reshape(
      (b,) + tuple(grid_size) + h.shape[2:])
  return box_sum(weighted, neighbourhood).reshape(h.shape)


def patched_readout_xla(states, weights, c_patches, *, cls_index: int,
                        grid_size: tuple[int, int], neighbourhood: int) -> jax.Array:
  """(B, P, D) fp32: states (B, L, D, N), weights (B, P), c_patches (B, P, N)."""
  hp = patched_states(states, weights, cls_index=cls_index, grid_size=grid_size,
                      neighbourhood=neighbourhood)
  return jnp.einsum('bpdn,bpn->bpd', hp, c_patches.astype(jnp.float32))

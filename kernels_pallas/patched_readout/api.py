"""Public entry point of the patched readout (OuroMamba-Gen's contrastive patch features).

    patched_readout(states (B, L, D, N), weights (B, P), c_patches (B, P, N), *, cls_index,
                    grid_size, neighbourhood, states_layout='bldn') -> (B, P, D) fp32
    f(τ) = C_τ · Σ_{k ∈ N(τ)} w_k h(k)   (p×p window, replicate padding, class token skipped)

implementation (`kernels_pallas._dispatch`): None -> 'triton' on GPU (for non-empty inputs),
'xla' elsewhere; 'xla' -> `reference` (materialises the box-filtered states); 'triton' -> the
Pallas kernels (`interpret=True` runs them on CPU).
On an H100 the kernels run the Vim-S readout (32 images) 2.1x faster than XLA forward +
backward (1.68 vs 3.55 ms) and take the Gen step from 220.9 to 133.8 ms (bf16, no remat) while
never materialising the weighted states (peak 19.3 vs 42.6 GiB; BENCHMARKS.md).
Both are differentiable in all three inputs (the kernel through its own backward kernel).
"""
from __future__ import annotations

import jax.numpy as jnp

from kernels_pallas import _dispatch
from kernels_pallas import _pallas_compat as compat
from kernels_pallas.patched_readout import pallas_triton
from kernels_pallas.patched_readout import reference
from kernels_pallas.patched_readout.config import PatchedReadoutBlockConfig, default_block_config
from kernels_pallas.patched_readout.reference import STATES_LAYOUTS



def _kernel_unsupported_reason(batch: int, channels: int, n_state: int) -> str | None:
  """An empty launch grid (B, D) or gathered axis (N) has nothing for the kernel to run."""
  if 0 in (batch, channels, n_state):
    return (f'the Triton kernel needs at least one image, channel and state (got B={batch}, '
            f'D={channels}, N={n_state})')
  return None


# The kernels on GPU (faster and smaller there, see the module docstring), XLA elsewhere (the
# interpreter is for tests, not speed).
DISPATCH = _dispatch.Dispatch(
    op='patched_readout',
    implementations=(_dispatch.Implementation('xla'),
                     _dispatch.Implementation('triton', _kernel_unsupported_reason)),
    preference={'gpu': ('triton', 'xla'), 'default': ('xla',)})
IMPLEMENTATIONS = DISPATCH.names


def patched_readout(states, weights, c_patches, *, cls_index: int,
                    grid_size: tuple[int, int], neighbourhood: int = 5,
                    states_layout: str = 'bldn', reversed_tokens: bool = False,
                    implementation: str | None = None,
                    interpret: bool | None = None,
                    block_config: PatchedReadoutBlockConfig | None = None):
  """See the module docstring; `states` fp32 (as the scan returns them), (B, L, D, N) for
  states_layout 'bldn' or the scan kernel's (B, L, N, D) for 'blnd'. `reversed_tokens`: the
  states' token axis runs backwards (the backward scan's own order; patches, weights and C stay
  in token order). The Triton kernel reads 'blnd' and reversed states in place (it transposes
  'bldn' ones); the XLA path flips reversed states and transposes 'blnd' ones first.
  `block_config` (Triton only): None picks `config.default_block_config` for the grid and N."""
  if states_layout not in STATES_LAYOUTS:
    raise ValueError(f'patched_readout: states_layout must be one of {STATES_LAYOUTS}, got '
                     f'{states_layout!r}.')
  if states.ndim != 4 or weights.ndim != 2 or c_patches.ndim != 3:
    raise ValueError(f'patched_readout: expected states (B, L, D, N) or (B, L, N, D), weights '
                     f'(B, P) and c_patches (B, P, N); got {states.shape}, {weights.shape}, '
                     f'{c_patches.shape}.')
  batch, length = states.shape[:2]
  channels, n_state = states.shape[2:]
  if states_layout == 'blnd':
    channels, n_state = n_state, channels
  if len(grid_size) != 2 or min(grid_size) < 1:  # the size check alone lets (-2, -3) through
    raise ValueError(f'patched_readout: grid_size must be (rows, columns) of the patch grid, '
                     f'both >= 1; got {grid_size}.')
  reference.check_grid(length - 1, cls_index, grid_size)
  if weights.shape != (batch, length - 1) or c_patches.shape != (batch, length - 1, n_state):
    raise ValueError(f'patched_readout: weights {weights.shape} and c_patches {c_patches.shape} '
                     f'must be ({batch}, {length - 1}) and ({batch}, {length - 1}, {n_state}) '
                     f'(one entry per patch token; N = {n_state} from the {states_layout!r} '
                     'states).')
  if not 0 <= cls_index < length:
    raise ValueError(f'patched_readout: cls_index {cls_index} is outside the {length} tokens.')
  reference.check_neighbourhood(neighbourhood)
  if DISPATCH.choose(implementation, batch, channels, n_state) == 'xla':
    states = reference.token_order_bldn(states, states_layout, reversed_tokens)
    return reference.patched_readout_xla(states, weights, c_patches, cls_index=cls_index,
                                         grid_size=grid_size, neighbourhood=neighbourhood)
  if states_layout == 'bldn':
    states = jnp.swapaxes(states, 2, 3)
  cfg = block_config or default_block_config(grid_size[1], n_state)
  f32 = lambda a: a.astype(jnp.float32)
  return pallas_triton.patched_readout(
      f32(states), f32(weights), f32(c_patches), int(cls_index), tuple(grid_size),
      int(neighbourhood), bool(reversed_tokens), cfg.block_d, cfg.num_warps, cfg.walks_by_state,
      compat.resolve_interpret(interpret))

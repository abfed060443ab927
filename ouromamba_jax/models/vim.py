"""Vision Mamba (hustvl/Vim, middle class token, bidirectional "v2" mixer) in Flax linen.

Param paths mirror hustvl's state-dict names (`layers_3/mixer/in_proj/kernel` is
`layers.3.mixer.in_proj.weight`), so the import map in `ouromamba_jax.io` stays short.
Forward order (hustvl `VisionMamba.forward_features`):
  conv patch embed (raster order) -> cls token inserted at n_patches // 2 -> + pos_embed
  -> depth x [fused add + RMSNorm (fp32 residual) -> mixer] -> add + RMSNorm (norm_f)
  -> head on the middle class token.
Images are NHWC, already normalised.

The blocks run under `jax.lax.scan`, so a jitted forward traces and compiles one block, not
`depth` unrolled ones (unrolled, a quantized Vim compiled 3-10x slower than a float one). The
stored layout stays per block (`layers_{i}/...`: checkpoints, the hustvl import and the
quantization rules' regexes see it); the forward stacks the blocks' params, a copy of the
block weights per call (Vim-B: 96 M block params, 384 MB fp32 read and written, ~0.16 ms at
an H200's 4.8 TB/s against a ~24 ms forward, under 1 %; W4 integer codes move ~4x less).
Quantized blocks stack only when their trees are alike (static fields such as bits and specs
included), so the blocks are cut into runs of alike consecutive blocks, each run scanned, the
runs applied in order (a lone block is applied as is). `models.blockwise` applies the same
Block to one block's params at a time.
On a GPU, inference forwards from batch 2 (at every batch with the Triton scan kernel) unroll
that scan (`scan_unroll`, `block_scan_unroll`): still traced from stacked params, but no device
loop, which measured ~0.1 ms per block faster at batch 64 in the float and the quantized path
alike.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.act_quant import producers
from kernels_pallas.selective_scan import api as scan_api
from ouromamba_jax.models import layers

# Called per block and direction with (states (B,L,D,N) fp32 -- (B,L,N,D) with
# state_layout='blnd' --, delta (B,L,D) after softplus, C (B,L,N)), all in original token order
# (with state_order='scan' the backward direction's states are not flipped and the call adds
# reversed_tokens=True); whatever it returns is sown into 'intermediates'.
StateFeatureFn = Callable[[jax.Array, jax.Array, jax.Array], Any]

DIRECTIONS = (('forward', ''), ('backward', '_b'))


def dt_bias_init(dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4):
  """Mamba's init: softplus(bias) ~ log-uniform in [dt_min, dt_max]."""
  def init(key, shape, dtype=jnp.float32):
    u = jax.random.uniform(key, shape, dtype)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = jnp.maximum(dt, dt_floor)
    return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus
  return init


def symmetric_uniform(bound):
  """Initialiser drawing from U(-bound, bound), torch's default for convs and Mamba's dt_proj."""
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def a_log_init(key, shape, dtype=jnp.float32):
  del key
  d_inner, d_state = shape
  return jnp.log(jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=dtype), (d_inner, d_state)))


class CausalConv1d(nn.Module):
  """Depthwise causal conv (torch Conv1d groups=C, padding K-1, first L outputs). kernel: (K, C)."""
  kernel_size: int = 4

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    uniform = symmetric_uniform(1.0 / math.sqrt(self.kernel_size))
    kernel = layers.read_param(self, 'kernel', uniform, (self.kernel_size, channels))
    bias = layers.read_param(self, 'bias', uniform, (channels,))
    return layers.causal_depthwise_conv1d(x, kernel, bias)


# Below this many samples on a GPU, the two scan directions run as one vmapped batch by default.
# Measured on one H200 (BENCHMARKS.md "Session 13" and "Session 14", Vim-B): batch 1 W4A4O8
# 13.6 -> 8.8 ms and bf16 5.9 -> 5.2 ms (the per-direction kernels are launch-bound); at depth 4
# every batch from 2 to 32 is faster vmapped in both the bf16 + Pallas scan and the W4A4O8 path
# (batch 32: 3.54 -> 3.28 and 4.93 -> 4.42 ms); at batch 64 W4A4O8 is equal (42.8 ms) and the
# bf16 + Pallas path 26.5 -> 28.8 ms slower, so 64 and up keep the loop.
DIRECTIONS_AS_ONE_BATCH_BELOW = 64


def directions_as_one_batch(setting: Optional[bool], batch: int) -> bool:
  """Whether the mixer vmaps its two directions: `setting` when given, else the measured rule."""
  if setting is not None:
    return bool(setting)
  return jax.default_backend() == 'gpu' and batch < DIRECTIONS_AS_ONE_BATCH_BELOW


# From this many samples on a GPU, the block scan is unrolled by default; with the Triton scan
# kernel, at every batch. Measured on one H100 (BENCHMARKS.md session 31, Vim-B, one process
# per batch set): unrolled, batch 64 took 26.6 -> 23.7 ms in bf16 + Pallas scan and 35.5 -> 32.9
# ms in W4A4O8 (the device loop costs ~0.1 ms per block there), batches 4-32 were equal or
# faster (W4A4O8 batch 8 14.4 -> 12.5 ms). Batch 1 (session 34, two processes, since the kernel
# splits a small batch's sequence): Triton scan 3.07 -> 2.46 and 3.13 -> 2.48 ms in bf16, W4A4O8
# 5.04 -> 4.46 and 5.36 -> 4.72, W8A8 5.60 -> 4.55; XLA's associative scan 4.42 -> 6.44 and
# 4.51 -> 6.53, so a model on that scan keeps the loop at batch 1.
UNROLL_BLOCKS_FROM = 2


def block_scan_unroll(setting: Optional[int], batch: int, length: int,
                      kernel_scan: bool = False) -> int:
  """Blocks per iteration of the block scan over `length` blocks: `setting` when given, else
  the measured rule (the whole run on a GPU from UNROLL_BLOCKS_FROM samples, or at any batch
  when the mixers scan with the Triton kernel, `kernel_scan`; else 1)."""
  if setting is not None:
    if setting < 1:
      raise ValueError(f'scan_unroll must be >= 1 (blocks per scan iteration), got {setting}')
    return setting
  unrolled = kernel_scan or batch >= UNROLL_BLOCKS_FROM
  return length if jax.default_backend() == 'gpu' and unrolled else 1


class BiMambaV2Mixer(nn.Module):
  """hustvl bimamba v2: shared in/out_proj, separate conv/x_proj/dt_proj/A/D per direction."""
  d_model: int
  d_state: int = 16
  d_conv: int = 4
  expand: int = 2
  dt_rank: Optional[int] = None
  n_layers: int = 24
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  state_feature_fn: Optional[StateFeatureFn] = None
  quant_implementation: Optional[str] = None
  state_layout: str = 'bldn'
  state_order: str = 'token'
  batch_directions: Optional[bool] = None
  fuse_linear_inputs: bool = True

  @nn.compact
  def __call__(self, hidden):
    if self.state_order not in ('token', 'scan'):
      raise ValueError(f"state_order must be 'token' or 'scan', got {self.state_order!r}")
    d_inner = self.expand * self.d_model
    dt_rank = self.dt_rank or math.ceil(self.d_model / 16)
    std = 0.02
    linear = lambda features, name, **kw: layers.Linear(
        features, dtype=self.dtype, name=name, quant_implementation=self.quant_implementation,
        kernel_init=kw.pop('kernel_init', nn.initializers.truncated_normal(std)), **kw)

    xz = linear(2 * d_inner, 'in_proj')(hidden)
    x, z = jnp.split(xz, 2, axis=-1)
    # The directions' params as stacked by the model or by `with_directions_stacked`, if so.
    given = None if self.is_initializing() else self.get_variable('params', STACKED_DIRECTIONS)
    stacked = (self._stacked_directions(given)
               if directions_as_one_batch(self.batch_directions, hidden.shape[0]) else None)
    if stacked is not None:
      y = self._both_directions(stacked, x, z, dt_rank)
    else:
      # Fused: the backward scan's epilogue writes both directions' mean (both paths), in the
      # scan's output dtype, x's: the mean's own where they agree.
      mean_in_scan = (self.fuse_linear_inputs and self.state_feature_fn is None
                      and x.dtype == jnp.dtype(self.dtype))
      if given is not None:
        if self.state_feature_fn is not None:
          raise ValueError('this mixer holds its directions stacked (a tree prepared by '
                           '`with_directions_stacked`, for inference forwards only); state '
                           "hooks need the per-direction params: pass the tree as it was "
                           'before that call.')
        outputs = self._directions_looped_from_stacked(given, x, z, dt_rank, mean_in_scan)
      else:
        outputs = {}
        for direction, suffix in DIRECTIONS:
          flip = (lambda t: jnp.flip(t, axis=1)) if suffix else (lambda t: t)
          conv = CausalConv1d(self.d_conv, name=f'conv1d{suffix}')
          x_proj = linear(dt_rank + 2 * self.d_state, f'x_proj{suffix}')
          dt_std = dt_rank ** -0.5
          dt_proj = linear(d_inner, f'dt_proj{suffix}', use_bias=True,
                           kernel_init=symmetric_uniform(dt_std), bias_init=dt_bias_init())
          a_log = layers.read_param(self, f'A{suffix}_log' if suffix else 'A_log', a_log_init,
                                    (d_inner, self.d_state))
          d_skip = layers.read_param(self, f'D{suffix}', nn.initializers.ones, (d_inner,))
          quantizer = lambda name, suffix=suffix: layers.optional_param(
              self, f'{name}{suffix}_quantizer')
          mean_with = outputs['forward'] if suffix and mean_in_scan else None
          scan_out, (delta, c_mat) = self._direction(
              flip(x), flip(z), conv, x_proj, dt_proj, quantizer, a_log, d_skip, dt_rank,
              return_states=self.state_feature_fn is not None, mean_with=mean_with,
              dt_proj_params=layers.optional_param(self, f'dt_proj{suffix}'))
          if self.state_feature_fn is not None:
            y, states = scan_out
            delta_tokens = flip(jax.nn.softplus(delta.astype(jnp.float32)))
            if self.state_order == 'scan':  # the backward direction's states stay reversed
              feats = self.state_feature_fn(states, delta_tokens, flip(c_mat),
                                            reversed_tokens=bool(suffix))
            else:
              feats = self.state_feature_fn(flip(states), delta_tokens, flip(c_mat))
            self.sow('intermediates', f'state_features_{direction}', feats)
          else:
            y = scan_out
          outputs[direction] = y  # in its scan order: the mean flips the backward one
      y = (outputs['backward'] if mean_in_scan else producers.DirectionMean(
          outputs['forward'], outputs['backward'], jnp.dtype(self.dtype)))
    out_std = std / math.sqrt(2 * self.n_layers)  # GPT-2 style prenorm residual rescale
    out_proj = linear(self.d_model, 'out_proj',
                      kernel_init=nn.initializers.truncated_normal(out_std))
    return out_proj(y if self.fuse_linear_inputs else producers.materialize(y))

  def _stacked_directions(self, given):
    """The two directions' params (conv, x_proj, dt_proj, A, D and their quantizer sites)
    stacked on a leading axis, or None where they cannot run as one batch: at init, with a
    state hook (Gen sows per direction), or when the trees differ (e.g. calibration's
    recorders, or different quantizers per direction). `given` (the mixer's stacked entry, from
    `with_stacked_directions`) is taken as it is."""
    if self.is_initializing() or self.state_feature_fn is not None:
      return None
    if given is not None:
      return given
    return stacked_directions(self.variables.get('params', {}))

  def _direction(self, x, z, conv, x_proj, dt_proj, quantizer, a_log, d_skip, dt_rank,
                 return_states=False, mean_with=None, dt_proj_params=None):
    """One scan direction on tokens already in its scan order: conv, x_proj, dt_proj, the
    Δ/B/C/A/D sites and the scan. The callables are modules (the loop: init, hooks and the
    calibration's recorders see them) or pure functions of stacked params (`_both_directions`),
    so both paths compute the same thing; `quantizer(name)` is a site's quantizer or None.
    Returns (scan output, (Δ, C)). With `mean_with` (the forward direction's output) the scan
    output is both directions' mean in token order. `dt_proj_params` (dt_proj's params, None
    at init) let dt's codes share B's and C's act_quant launch (`layers.split_sites`)."""
    impl = self.quant_implementation
    site = lambda name, v: layers.quantize_site(quantizer(name), v, impl)
    u = nn.silu(conv(x))
    dt, b_mat, c_mat = layers.split_sites(
        x_proj(u), (dt_rank, self.d_state, self.d_state),
        dt_proj_params if self.fuse_linear_inputs else None, (quantizer('B'), quantizer('C')),
        impl)
    delta = site('delta', dt_proj(dt))  # bias included: the Δ quantizer sees pre-softplus Δ
    a_mat = site('A', layers.state_matrix(a_log))
    d_vec = site('D', layers.skip_vector(d_skip))
    out = scan_api.selective_scan(
        u, delta, a_mat, b_mat, c_mat, d_vec, z, None, delta_softplus=True,
        return_states=return_states, implementation=self.scan_implementation,
        states_layout=self.state_layout, mean_with=mean_with)
    return out, (delta, c_mat)

  def _direction_of(self, p, x, z, dt_rank, mean_with=None):
    """`_direction` on one direction's params `p` (a slice of the stacked directions: conv,
    x_proj and dt_proj as pure functions of it, its quantizer sites under their roles)."""
    impl = self.quant_implementation
    proj = lambda q: (lambda v: layers.linear(v, q['kernel'], q.get('bias'),
                                              q.get('input_quantizer'), self.dtype, impl))
    conv = lambda v: layers.causal_depthwise_conv1d(v, p['conv']['kernel'], p['conv']['bias'])
    return self._direction(x, z, conv, proj(p['x_proj']), proj(p['dt_proj']), p.get,
                           p['a_log'], p['d'], dt_rank, mean_with=mean_with,
                           dt_proj_params=p['dt_proj'])[0]

  def _both_directions(self, p, x, z, dt_rank):
    """Both scan directions as one vmapped computation: every kernel launch of the per-direction
    part (act_quant, the small GEMMs, the scan) covers both directions. Same arithmetic as the
    loop in __call__ (`_direction`); returns their mean, unevaluated (`DirectionMean`)."""
    flip = lambda t: jnp.flip(t, axis=1)
    ys = jax.vmap(lambda p, x, z: self._direction_of(p, x, z, dt_rank))(
        p, jnp.stack([x, flip(x)]), jnp.stack([z, flip(z)]))
    return producers.DirectionMean(ys[0], ys[1], jnp.dtype(self.dtype))

  def _directions_looped_from_stacked(self, p, x, z, dt_rank, mean_in_scan):
    """{direction: scan output} of __call__'s loop for a mixer whose directions' params are
    stacked already (`with_directions_stacked`): each direction reads its slice of them, and
    the backward scan forms the mean as in the loop."""
    outputs = {}
    for i, (direction, suffix) in enumerate(DIRECTIONS):
      flip = (lambda t: jnp.flip(t, axis=1)) if suffix else (lambda t: t)
      mean_with = outputs['forward'] if suffix and mean_in_scan else None
      outputs[direction] = self._direction_of(jax.tree.map(lambda a, i=i: a[i], p), flip(x),
                                              flip(z), dt_rank, mean_with)
    return outputs


# The entry under which `with_stacked_directions` hands a mixer its directions' params stacked.
STACKED_DIRECTIONS = 'directions'


def _direction_entries(suffix: str) -> dict[str, str]:
  """One direction's entries of a mixer's params: {role: name}."""
  entries = {'conv': f'conv1d{suffix}', 'x_proj': f'x_proj{suffix}',
             'dt_proj': f'dt_proj{suffix}', 'a_log': f'A{suffix}_log' if suffix else 'A_log',
             'd': f'D{suffix}'}
  entries.update({t: f'{t}{suffix}_quantizer' for t in ('delta', 'B', 'C', 'A', 'D')})
  return entries


def stacked_directions(mixer_params) -> Optional[dict]:
  """The two directions' params of a mixer's params, {role: leaves stacked (2, ...)} with the
  quantizer sites under their site names (None where absent), or None where the two trees
  differ in structure, shapes or dtypes, or hold non-arrays (calibration's recorders)."""
  trees = [{role: mixer_params.get(name) for role, name in _direction_entries(suffix).items()}
           for _, suffix in DIRECTIONS]
  if len(block_runs(trees)) != 1 or not all(
      isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree.leaves(trees)):
    return None
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def with_stacked_directions(block_params):
  """A block's params with its mixer's two directions stacked once (`STACKED_DIRECTIONS`,
  their per-direction entries dropped), or as they are where they do not stack. Done before
  the blocks' params are stacked for the block scan, so the stacking is one copy for all
  blocks instead of ~25 small copies in every block's step: at batch 1 each is a launch of its
  own, and a quantized mixer has ~25 stacked leaves (codes, scales, quantizer steps) against a
  float one's ~7."""
  mixer = block_params.get('mixer')
  if mixer is None or STACKED_DIRECTIONS in mixer:  # no Vim mixer, or prepared already
    return block_params
  stacked = stacked_directions(mixer)
  if stacked is None:
    return block_params
  names = {name for _, suffix in DIRECTIONS for name in _direction_entries(suffix).values()}
  kept = {name: value for name, value in mixer.items() if name not in names}
  return {**block_params, 'mixer': {**kept, STACKED_DIRECTIONS: stacked}}


def with_directions_stacked(params):
  """A Vim param tree prepared for inference: every block's mixer holds its two directions'
  params stacked (`with_stacked_directions`), done once here instead of in every forward.
  Below DIRECTIONS_AS_ONE_BATCH_BELOW samples a GPU forward runs the directions as one vmapped
  batch and stacked their params on each call: in a Vim-B batch-1 W4A4O8 forward that was 336
  us of device time in 5 launches, 93 us in the float one (H100, session 32's profile); with
  this tree Vim-B batch 1 took 4.72 -> 3.66 ms in W4A4O8 and 2.48 -> 2.12 ms in bf16 + Pallas
  (H100, session 34). Where the directions are looped (batch 64) it was no faster (W4A4O8) or
  slower (bf16 + Pallas 22.40 -> 23.99 ms), so it is a step for small-batch inference
  (`prepared_for_batch` applies it by batch). The logits are the same bit for bit at every
  batch (the loop reads a slice per direction). For inference forwards only: calibration, the
  site search and Gen's state hooks read the per-direction params."""
  return {name: with_stacked_directions(value) if name.startswith('layers_') else value
          for name, value in params.items()}


def prepared_for_batch(params, batch: int, batch_directions: Optional[bool] = None):
  """`params` prepared for inference forwards of `batch` samples: with the directions stacked
  once (`with_directions_stacked`) where such a forward vmaps them (`directions_as_one_batch`),
  as they are where it loops them. Measured on one H100 (BENCHMARKS.md session 37, Vim-B, one
  process): at batch 1 stacked trees took W4A4O8 5.81 -> 4.63 ms, bf16 + Pallas 2.91 -> 2.60
  and bf16 XLA 4.99 -> 4.85; at batch 64 (directions looped) bf16 + Pallas ran 24.05 -> 25.30
  ms from a stacked tree, W4A4O8 33.49 -> 33.27. A tree stacked already is returned as it is."""
  if directions_as_one_batch(batch_directions, batch):
    return with_directions_stacked(params)
  return params


def holds_stacked_directions(params) -> bool:
  """Whether a Vim param tree was prepared by `with_directions_stacked`."""
  return any(STACKED_DIRECTIONS in value.get('mixer', {}) for name, value in params.items()
             if name.startswith('layers_'))


class Block(nn.Module):
  """Fused add + RMSNorm (residual kept in fp32) followed by the mixer.

  The first block gets a zero residual (0 + hidden is hidden), so every block is one program.
  `fuse_norm`: the mixer gets the normalized input unevaluated (`producers.RMSNormed`), which
  an integer-mode in_proj's act_quant kernel forms from the residual in registers (one pass
  over (B, L, d_model) less per block); other Linears materialize it. Same logits."""
  mixer: Callable[..., nn.Module]
  eps: float = 1e-5
  dtype: Any = jnp.float32
  fuse_norm: bool = False

  @nn.compact
  def __call__(self, hidden, residual):
    residual = residual + hidden.astype(jnp.float32)
    norm = layers.RMSNorm(self.eps, name='norm')
    normed = (norm(residual, as_producer=self.dtype) if self.fuse_norm
              else norm(residual).astype(self.dtype))
    return self.mixer(name='mixer')(normed), residual


class PatchEmbed(nn.Module):
  d_model: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    fan_in = p * p * images.shape[-1]
    x = nn.Conv(self.d_model, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                kernel_init=nn.initializers.lecun_normal(),
                bias_init=_fan_in_uniform(fan_in), name='proj')(images.astype(self.dtype))
    b, gh, gw, d = x.shape
    return x.reshape(b, gh * gw, d)  # raster order: token = row * gw + col


def block_runs(trees: list[Any]) -> list[list[Any]]:
  """`trees` cut into runs of consecutive trees that stack (equal `layers.stack_kind`)."""
  return [[tree for _, tree in run] for _, run in itertools.groupby(
      zip(map(layers.stack_kind, trees), trees), key=lambda t: t[0])]


def _fan_in_uniform(fan_in):
  return symmetric_uniform(1.0 / math.sqrt(fan_in))


class VisionMamba(nn.Module):
  """Vim with the middle class token; returns fp32 logits for NHWC images."""
  num_classes: int = 1000
  img_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  d_model: int = 192
  depth: int = 24
  d_state: int = 16
  d_conv: int = 4
  expand: int = 2
  dt_rank: Optional[int] = None
  eps: float = 1e-5
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  remat: bool = False
  state_feature_fn: Optional[StateFeatureFn] = None
  # Layout of the states handed to state_feature_fn: 'bldn' (B, L, D, N) or 'blnd' (B, L, N, D),
  # the Triton scan kernel's own (Gen uses it: no transpose of the largest tensor).
  state_layout: str = 'bldn'
  # 'token': states in token order; 'scan': the backward direction's states are handed over in
  # its scan order (no flipped copy) and the hook gets reversed_tokens=True for them.
  state_order: str = 'token'
  # Kernels of quantized Linears in integer mode (act_quant + mixed_gemm): 'xla' | 'triton' |
  # None (Triton on GPU, XLA elsewhere). Float and fake-quant params ignore it.
  quant_implementation: Optional[str] = None
  # True: the blocks run under jax.lax.scan (one block compiles). False: one named submodule
  # `layers_{i}` per block, for tools that intercept module calls and need every block's own
  # path and values (quant.rules.find_sites, reports.capture.per_piece); same logits.
  scan_blocks: bool = True
  # Blocks of a run traced per iteration of the block scan (`jax.lax.scan(unroll=...)`): 1 (a
  # loop on the device) up to the run's length (unrolled over the stacked params). None: the
  # measured rule of `block_scan_unroll` (unrolled on a GPU from batch 2, or at any batch with
  # the Triton scan kernel) in plain forwards.
  scan_unroll: Optional[int] = None
  # True: the mixers run their two scan directions as one vmapped batch (one launch of each
  # per-direction kernel instead of two); same params, logits equal to rounding. Ignored at init,
  # under a state hook (Gen) and where the two directions' param trees differ. None: the
  # measured rule of `directions_as_one_batch` (on for small batches on a GPU). Tools that
  # intercept module calls turn it off with scan_blocks (`layers.module_by_module`).
  batch_directions: Optional[bool] = None
  # True: the pass forming out_proj's input (the two directions' mean: a flip, an add and a
  # cast over (B, L, d_inner) per block) is fused into a neighbour, in float and quantized
  # models alike. Directions looped (batch >= 64 on a GPU): the backward scan's epilogue
  # writes the mean (`selective_scan(mean_with=...)`). Directions vmapped: out_proj gets the
  # two outputs (`act_quant.producers.DirectionMean`), which an integer-mode out_proj's
  # act_quant kernel averages in registers (other Linears compute the mean first). Same
  # logits, and 0.5 ms less per Vim-B batch-64 forward in both paths (H200, BENCHMARKS.md
  # session 26). Likewise in_proj's input, the block's RMSNorm: an integer-mode in_proj's
  # act_quant kernel normalizes the residual in registers (`producers.RMSNormed`, `Block`).
  # Tools that intercept module calls turn it off.
  fuse_linear_inputs: bool = True

  @property
  def grid_size(self) -> tuple[int, int]:
    return (self.img_size // self.patch_size, self.img_size // self.patch_size)

  @property
  def num_patches(self) -> int:
    gh, gw = self.grid_size
    return gh * gw

  @property
  def cls_index(self) -> int:
    return self.num_patches // 2

  @property
  def seq_len(self) -> int:
    return self.num_patches + 1

  def mixer_factory(self):
    return lambda name: BiMambaV2Mixer(
        self.d_model, self.d_state, self.d_conv, self.expand, self.dt_rank, self.depth,
        self.dtype, self.scan_implementation, self.state_feature_fn,
        quant_implementation=self.quant_implementation, state_layout=self.state_layout,
        state_order=self.state_order, batch_directions=self.batch_directions,
        fuse_linear_inputs=self.fuse_linear_inputs, name=name)

  def block(self) -> Block:
    """The model's Block, unbound: what the forward applies to each block's params (and
    `models.blockwise` to one block's)."""
    return Block(self.mixer_factory(), self.eps, self.dtype, self.fuse_linear_inputs,
                 parent=None)

  def setup(self):
    # Defined here, not inline, so that `embed` and `classify` also run on their own
    # (`model.apply(variables, images, method=VisionMamba.embed)`), outside the compact __call__:
    # `models.blockwise` runs the model one block at a time with them.
    self.patch_embed = PatchEmbed(self.d_model, self.patch_size, self.dtype)
    self.norm_f = layers.RMSNorm(self.eps)
    self.head = layers.Linear(self.num_classes, use_bias=True, dtype=jnp.float32,
                              kernel_init=nn.initializers.truncated_normal(0.02),
                              quant_implementation=self.quant_implementation)

  def embed(self, images):
    """Patch tokens + middle class token + pos_embed: the first block's input (B, L, d_model)."""
    if images.ndim != 4 or images.shape[1:] != (self.img_size, self.img_size, self.in_chans):
      raise ValueError(
          f'VisionMamba expects NHWC images of shape (B, {self.img_size}, {self.img_size}, '
          f'{self.in_chans}); got {images.shape}. Resize the images or set img_size/in_chans.')
    tokens = self.patch_embed(images)
    init = nn.initializers.truncated_normal(0.02)
    cls = layers.read_param(self, 'cls_token', init, (1, 1, self.d_model))
    pos = layers.read_param(self, 'pos_embed', init, (1, self.seq_len, self.d_model))
    b = tokens.shape[0]
    mid = self.cls_index
    cls = jnp.broadcast_to(cls.astype(tokens.dtype), (b, 1, self.d_model))
    x = jnp.concatenate([tokens[:, :mid], cls, tokens[:, mid:]], axis=1)
    return x + pos.astype(x.dtype)

  @nn.compact
  def __call__(self, images):
    hidden = self.embed(images)
    carry = (hidden, jnp.zeros(hidden.shape, jnp.float32))
    if self.is_initializing() or not self.scan_blocks:
      # Named submodules create (at init) and show (to interceptors) the per-block tree.
      block_cls = nn.remat(Block) if self.remat else Block
      for i in range(self.depth):
        carry = block_cls(self.mixer_factory(), self.eps, self.dtype, self.fuse_linear_inputs,
                          name=f'layers_{i}')(*carry)
    else:
      carry = self._run_blocks(carry)
    return self.classify(*carry)

  def _run_blocks(self, carry):
    """The blocks applied functionally to their params, each run of alike blocks under one
    scan. What the mixers sow (Gen's state features) comes out per block, as scan outputs,
    and is put back under `layers_{i}` as if sown there."""
    block = self.block()
    collect = self.is_mutable_collection('intermediates')

    def step(carry, layer):
      if not collect:
        return block.apply({'params': layer}, *carry), {}
      carry, state = block.apply({'params': layer}, *carry, mutable=['intermediates'])
      return carry, state.get('intermediates', {})

    step = jax.checkpoint(step) if self.remat else step
    trees = [layers.read_param(self, f'layers_{i}', None) for i in range(self.depth)]
    if (not collect and self.state_feature_fn is None
        and directions_as_one_batch(self.batch_directions, carry[0].shape[0])):
      trees = [with_stacked_directions(tree) for tree in trees]
    # The rule was measured on inference forwards; Gen's (which collect state features) and
    # rematerialized ones keep the loop unless scan_unroll says otherwise. A training step
    # differentiates a plain forward, so it follows the rule too (not timed for training).
    plain_forward = not collect and self.state_feature_fn is None and not self.remat
    setting = 1 if self.scan_unroll is None and not plain_forward else self.scan_unroll
    batch = carry[0].shape[0]
    kernel_scan = scan_api.DISPATCH.choose(self.scan_implementation, batch) == 'triton'
    start = 0
    for run in block_runs(trees):
      if len(run) == 1:
        carry, sown = step(carry, run[0])
        sown = [sown]
      else:
        carry, stacked = jax.lax.scan(step, carry, jax.tree.map(lambda *x: jnp.stack(x), *run),
                                      unroll=block_scan_unroll(setting, batch, len(run),
                                                               kernel_scan))
        sown = [jax.tree.map(lambda x, j=j: x[j], stacked) for j in range(len(run))]
      for i, value in enumerate(sown, start):
        if value:
          self.put_variable('intermediates', f'layers_{i}', value)
      start += len(run)
    return carry

  def classify(self, hidden, residual):
    """The last block's (hidden, residual) -> fp32 logits: final add + RMSNorm, middle class
    token, head."""
    final = self.norm_f(residual + hidden.astype(jnp.float32))
    return self.head(final[:, self.cls_index])

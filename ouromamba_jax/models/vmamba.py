"""VMamba (MzeroMiko/VMamba `classification/models/vmamba.py`, VSSM) in Flax linen.

Covers the released v2 classification models (configs `vmambav2v_tiny_224`, `vmambav2_small_224`,
`vmambav2_base_224`: forward_type 'v05_noz', ssm_d_state 1, 3x3 depthwise conv without bias,
patch embed 'v2', downsample 'v3', LayerNorm everywhere, MLP ratio 4, no pos embed):

  patch embed v2: conv k=p/2+1 s=p/2 p=1 (C/2) -> LN -> GELU -> same conv (C) -> LN
  4 stages of [VSS blocks, downsample v3: conv k3 s2 p1 (2C) -> LN] (no downsample after the last)
  VSS block: x + SS2D(LN(x)), then x + MLP(LN(x)) (fc1 -> exact GELU -> fc2)
  SS2D ('v05_noz'): in_proj (no z gate) -> depthwise conv -> SiLU -> cross scan -> out_norm LN
    -> out_proj
  classifier: LN -> global average pool -> head

The official model is channel-first (`ln2d`, 1x1 convs as Linear2d); this one is NHWC with
the same math. Param names follow the official state-dict names where they are plain
(`layers_2/blocks_3/op/x_proj_weight` is `layers.2.blocks.3.op.x_proj_weight`); the few
numbered Sequential members get names (`patch_embed/conv_in` is `patch_embed.0`), mapped by
`ouromamba_jax.io.vmamba_keys`. The per-direction SSM params stay stacked as the official
ones are (x_proj_weight (K, R+2N, Di), dt_projs_weight (K, Di, R), dt_projs_bias (K, Di),
A_logs (K*Di, N), Ds (K*Di,)) since the four directions run as one batched computation.

Cross scan (official `cross_scan_fwd`/`cross_merge_fwd`, scans=0) on an H x W grid:
direction 0 is row-major (token h*W + w), 1 column-major (w*H + h), 2 and 3 are 0 and 1
reversed. Each direction's output is put back on the grid and the four are summed. The four
scans run as one `selective_scan` call (see `block_diagonal_states`).

Gen on SS2D (issue 18 item 3): with a `state_feature_fn`, the hooked blocks (`state_blocks`,
flat block indices over the stages) also return the four directions' SSM states; each
direction's states, Δ (after softplus) and C are put back on the H x W grid
(`directions_to_grid`, the inverse of `cross_scan` without `cross_merge`'s sum), so the hook
sees (B, K, H*W, ...) in row-major token order whatever the scan order, and what it returns is
sown as 'state_features'. The loss itself is `ouromamba_jax.gen.ss2d` (DEVIATIONS.md).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels_pallas.selective_scan import api as scan_api
from ouromamba_jax.models import layers
from ouromamba_jax.models.vim import a_log_init
from ouromamba_jax.models.vim import dt_bias_init
from ouromamba_jax.models.vim import symmetric_uniform

K_DIRECTIONS = 4

# Called per hooked block with (states (B, K, P, Di, N) fp32, delta (B, K, P, Di) after softplus,
# C (B, K, P, N)), every direction in row-major grid order (P = H*W), and grid_size=(H, W);
# whatever it returns is sown into 'intermediates' as the SS2D's 'state_features'.
GridStateFn = Callable[..., Any]


def cross_scan(x):
  """(B, H, W, D) -> (B, 4, H*W, D): row-major, column-major, and both reversed."""
  b, h, w, d = x.shape
  rows = x.reshape(b, h * w, d)
  cols = jnp.swapaxes(x, 1, 2).reshape(b, h * w, d)
  return jnp.stack([rows, cols, rows[:, ::-1], cols[:, ::-1]], axis=1)


def cross_merge(ys, h, w):
  """(B, 4, H*W, D) -> (B, H, W, D): each direction's output back on the grid, summed."""
  b, _, _, d = ys.shape
  rows = ys[:, 0] + ys[:, 2, ::-1]
  cols = ys[:, 1] + ys[:, 3, ::-1]
  return rows.reshape(b, h, w, d) + jnp.swapaxes(cols.reshape(b, w, h, d), 1, 2)


def directions_to_grid(ys, h, w):
  """(B, 4, H*W, ...) in each direction's scan order -> (B, 4, H*W, ...) all in row-major grid
  order: `cross_merge` without the sum (`cross_merge(ys) == directions_to_grid(ys).sum(1)`)."""
  b, _, length = ys.shape[:3]
  rest = ys.shape[3:]
  cols = lambda t: jnp.swapaxes(t.reshape((b, w, h) + rest), 1, 2).reshape((b, length) + rest)
  return jnp.stack([ys[:, 0], cols(ys[:, 1]), ys[:, 2, ::-1], cols(ys[:, 3, ::-1])], axis=1)


def block_diagonal_states(bs, cs):
  """Per-direction B, C (B, K, L, N) -> (K*B, L, K*N), direction k's in state block k, zero
  elsewhere.

  The scan API shares A (D, N) over the batch, but each direction has its own A. Folding the
  directions into the batch with A stacked along the state axis (A' = [A_0 .. A_3], (D, K*N))
  runs all four in one call exactly: a state block of another direction gets zero input
  (B' = 0) and is never read (C' = 0). The cost is K times the state size (K*N = 4 for N = 1).
  """
  b, k, length, n = bs.shape
  eye = jnp.eye(k, dtype=bs.dtype)

  def spread(m):
    m = jnp.einsum('bkln,kj->kbljn', m, eye)
    return m.reshape(k * b, length, k * n)

  return spread(bs), spread(cs)


def ss2d_scan(xs, deltas, bs, cs, a, ds, implementation=None, return_states=False):
  """The four directions' selective scans in one `selective_scan` call.

  xs, deltas: (B, K, L, Di), deltas with dt_projs_bias added, before softplus; bs, cs:
  (B, K, L, N); a = -exp(A_logs) (K*Di, N); ds (K*Di,). A and Δ come in formed (not as A_logs
  and bias) because their quantizers sit there. Returns (B, K, L, Di) fp32 (official
  `selective_scan_torch`, oflex=True).
  """
  b, k, length, d_inner = xs.shape
  n = bs.shape[-1]
  fold = lambda t: jnp.swapaxes(t, 0, 1).reshape(k * b, length, t.shape[-1])
  a = jnp.swapaxes(a.astype(jnp.float32).reshape(k, d_inner, n), 0, 1).reshape(d_inner, k * n)
  b_big, c_big = block_diagonal_states(bs.astype(jnp.float32), cs.astype(jnp.float32))
  u = xs.astype(jnp.float32)
  out = scan_api.selective_scan(fold(u), fold(deltas.astype(jnp.float32)), a, b_big, c_big, None,
                                None, None, delta_softplus=True, return_states=return_states,
                                implementation=implementation)
  y, states = out if return_states else (out, None)
  y = jnp.swapaxes(y.reshape(k, b, length, d_inner), 0, 1)
  y = y + u * ds.astype(jnp.float32).reshape(k, d_inner)[None, :, None, :]
  if not return_states:
    return y
  states = states.reshape(k, b, length, d_inner, k, n)
  return y, jnp.stack([states[j, :, :, :, j] for j in range(k)], axis=1)


def normalize(x, mean, var, eps: float, weight, bias):
  """(x - mean) / sqrt(var + eps) * weight + bias in fp32, back in x's dtype: the arithmetic of
  torch's LayerNorm and BatchNorm alike, which differ only in where mean and var come from."""
  y = (x.astype(jnp.float32) - mean.astype(jnp.float32)) * jax.lax.rsqrt(
      var.astype(jnp.float32) + eps)
  return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nn.Module):
  """torch LayerNorm over the last axis (fp32 statistics), params named weight/bias."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight = layers.read_param(self, 'weight', nn.initializers.ones, (c,))
    bias = layers.read_param(self, 'bias', nn.initializers.zeros, (c,))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return normalize(x, mean, var, self.eps, weight, bias)


def conv2d(features, kernel_size, stride, padding, name, groups=1, use_bias=True, dtype=None):
  """torch Conv2d (symmetric zero padding) as a Flax conv on NHWC."""
  return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                 use_bias=use_bias, dtype=dtype, name=name)


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
  """The output side of a torch Conv2d over `size` input pixels."""
  return (size + 2 * padding - kernel_size) // stride + 1


def downsampled_grids(side: int, num_stages: int) -> tuple[tuple[int, int], ...]:
  """Square (H, W) token grids of `num_stages` stages, the first `side` wide, each next one
  after a conv k3 s2 p1 downsample (ceil halving), as both VMamba and MambaVision shrink them."""
  grids = []
  for _ in range(num_stages):
    grids.append((side, side))
    side = conv_output_size(side, 3, 2, 1)
  return tuple(grids)


def check_nhwc_images(images, in_chans: int, model_name: str) -> None:
  """Refuses images that are not NHWC with `in_chans` channels up front: the patch embed's conv
  would otherwise fail (or run on the wrong axis) without naming the expected layout."""
  if images.ndim != 4 or images.shape[-1] != in_chans:
    raise ValueError(f'{model_name} expects NHWC images with {in_chans} channels; '
                     f'got {images.shape}')


def _named_or_unbound(name: Optional[str]) -> dict[str, Any]:
  """A submodule's placement: a named child of the module building it, or (no name) an
  unbound module that `models.blockwise` applies to its own params."""
  return {'name': name} if name else {'parent': None}


class SS2D(nn.Module):
  """The 2-D selective scan mixer, official forward_type 'v05_noz'."""
  d_model: int
  d_state: int = 1
  ssm_ratio: float = 2.0
  dt_rank: Optional[int] = None
  d_conv: int = 3
  conv_bias: bool = False
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  state_feature_fn: Optional[GridStateFn] = None

  @nn.compact
  def __call__(self, x):
    d_inner = int(self.ssm_ratio * self.d_model)
    rank = self.dt_rank or math.ceil(self.d_model / 16)
    n, k = self.d_state, K_DIRECTIONS
    linear = lambda features, name: layers.Linear(
        features, dtype=self.dtype, name=name, kernel_init=nn.initializers.truncated_normal(0.02),
        quant_implementation=self.quant_implementation)
    site = lambda t, tensor: layers.apply_site(self, f'{tensor}_quantizer', t)

    x = linear(d_inner, 'in_proj')(x)
    if self.d_conv > 1:
      x = conv2d(d_inner, self.d_conv, 1, (self.d_conv - 1) // 2, 'conv2d', groups=d_inner,
                 use_bias=self.conv_bias, dtype=self.dtype)(x)
    x = nn.silu(x)

    dt_std = rank ** -0.5
    x_proj = layers.read_param(self, 'x_proj_weight', symmetric_uniform(d_inner ** -0.5),
                               (k, rank + 2 * n, d_inner))
    dt_weight = layers.read_param(self, 'dt_projs_weight', symmetric_uniform(dt_std),
                                  (k, d_inner, rank))
    dt_bias = layers.read_param(self, 'dt_projs_bias', _stacked(dt_bias_init(), k), (k, d_inner))
    a_logs = layers.read_param(self, 'A_logs', _flat_a_log_init(k), (k * d_inner, n))
    ds = layers.read_param(self, 'Ds', nn.initializers.ones, (k * d_inner,))

    b, h, w, _ = x.shape
    xs = cross_scan(x)
    x_dbl = layers.stacked_linear(self, 'x_proj', x_proj, xs, self.dtype)
    dts, bs, cs = jnp.split(x_dbl, [rank, rank + n], axis=-1)
    dts = layers.stacked_linear(self, 'dt_projs', dt_weight, dts, self.dtype)
    # The quantizer sites of OuroMamba's SSM tensors (as Vim's: Δ with its bias, before
    # softplus); the per-direction ones are stacked (B, K, L, C), in each direction's scan order.
    deltas = site(dts.astype(jnp.float32) + dt_bias.astype(jnp.float32)[None, :, None, :],
                  'delta')
    bs, cs = site(bs, 'B'), site(cs, 'C')
    a = site(layers.state_matrix(a_logs), 'A')
    ds = site(layers.skip_vector(ds), 'D')
    hook = self.state_feature_fn
    ys = ss2d_scan(xs, deltas, bs, cs, a, ds, self.scan_implementation, hook is not None)
    if hook is not None:
      ys, states = ys
      grid = lambda t: directions_to_grid(t, h, w)
      self.sow('intermediates', 'state_features',
               hook(grid(states), grid(jax.nn.softplus(deltas)), grid(cs.astype(jnp.float32)),
                    grid_size=(h, w)))
    y = LayerNorm(name='out_norm')(cross_merge(ys, h, w))
    return linear(self.d_model, 'out_proj')(y.astype(self.dtype))


def _stacked(init, copies):
  return lambda key, shape, dtype=jnp.float32: jnp.stack(
      [init(kk, shape[1:], dtype) for kk in jax.random.split(key, copies)])


def _flat_a_log_init(copies):
  def init(key, shape, dtype=jnp.float32):
    d_inner = shape[0] // copies
    return jnp.tile(a_log_init(key, (d_inner, shape[1]), dtype), (copies, 1))
  return init


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears

  @nn.compact
  def __call__(self, x):
    dense = lambda features, name: layers.Linear(
        features, use_bias=True, dtype=self.dtype, name=name,
        kernel_init=nn.initializers.truncated_normal(0.02),
        quant_implementation=self.quant_implementation)
    y = nn.gelu(dense(self.hidden, 'fc1')(x), approximate=False)
    return dense(x.shape[-1], 'fc2')(y)


class VSSBlock(nn.Module):
  """Pre-norm residual SS2D then pre-norm residual MLP (drop path is identity at eval)."""
  d_model: int
  d_state: int = 1
  ssm_ratio: float = 2.0
  dt_rank: Optional[int] = None
  d_conv: int = 3
  conv_bias: bool = False
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  state_feature_fn: Optional[GridStateFn] = None

  @nn.compact
  def __call__(self, x, stream=None):
    """x -> block output. The block-wise calibration calls it as (branch, stream) ->
    (branch, stream) (`models.blockwise`, like Vim's (hidden, residual)): the input is `stream`
    (the first argument only carries the previous branch and is unused), the output the new
    stream and its residual branches' sum, output - input, which the loss compares."""
    x_in = x if stream is None else stream
    op = SS2D(self.d_model, self.d_state, self.ssm_ratio, self.dt_rank, self.d_conv,
              self.conv_bias, self.dtype, self.scan_implementation,
              quant_implementation=self.quant_implementation,
              state_feature_fn=self.state_feature_fn, name='op')
    x = x_in + op(LayerNorm(name='norm')(x_in))
    mlp = Mlp(int(self.d_model * self.mlp_ratio), self.dtype,
              quant_implementation=self.quant_implementation, name='mlp')
    x = x + mlp(LayerNorm(name='norm2')(x))
    return x if stream is None else (x - x_in, x)


class PatchEmbedV2(nn.Module):
  """Two overlapping stride-p/2 convs (official `_make_patch_embed_v2`, patch_norm=True)."""
  d_model: int
  patch_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    stride = self.patch_size // 2
    x = conv2d(self.d_model // 2, stride + 1, stride, 1, 'conv_in', dtype=self.dtype)(images)
    x = nn.gelu(LayerNorm(name='norm_in')(x), approximate=False)
    x = conv2d(self.d_model, stride + 1, stride, 1, 'conv_out', dtype=self.dtype)(x)
    return LayerNorm(name='norm_out')(x)


class DownsampleV3(nn.Module):
  """Conv k3 s2 p1 to the next stage's width, then LN (official `_make_downsample_v3`)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv2d(self.features, 3, 2, 1, 'conv', dtype=self.dtype)(x)
    return LayerNorm(name='norm')(x)


class Stage(nn.Module):
  """`depth` VSS blocks, then (all stages but the last) the downsample to `out_dim`."""
  d_model: int
  depth: int
  out_dim: Optional[int]
  d_state: int = 1
  ssm_ratio: float = 2.0
  dt_rank: Optional[int] = None
  d_conv: int = 3
  conv_bias: bool = False
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  state_feature_fn: Optional[GridStateFn] = None
  hooked_blocks: tuple[int, ...] = ()     # the blocks (of this stage) given state_feature_fn
  remat: bool = False

  def block(self, j: int, name: Optional[str] = None) -> VSSBlock:
    """Block j (unbound without a name: `models.blockwise` applies it on its own)."""
    block_cls = nn.remat(VSSBlock) if self.remat else VSSBlock
    hook = self.state_feature_fn if j in self.hooked_blocks else None
    return block_cls(self.d_model, self.d_state, self.ssm_ratio, self.dt_rank, self.d_conv,
                     self.conv_bias, self.mlp_ratio, self.dtype, self.scan_implementation,
                     quant_implementation=self.quant_implementation, state_feature_fn=hook,
                     **_named_or_unbound(name))

  def downsample(self, name: Optional[str] = None) -> DownsampleV3:
    return DownsampleV3(self.out_dim, self.dtype, **_named_or_unbound(name))

  @nn.compact
  def __call__(self, x):
    for j in range(self.depth):
      x = self.block(j, f'blocks_{j}')(x)
    if self.out_dim is not None:
      x = self.downsample('downsample')(x)
    return x


class VMamba(nn.Module):
  """VSSM classifier; NHWC images (any H, W; `img_size` only sizes init) -> fp32 logits."""
  num_classes: int = 1000
  img_size: int = 224
  patch_size: int = 4
  in_chans: int = 3
  dims: int = 96
  depths: Sequence[int] = (2, 2, 8, 2)
  d_state: int = 1
  ssm_ratio: float = 1.0
  dt_rank: Optional[int] = None
  d_conv: int = 3
  conv_bias: bool = False
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  # Gen: the hook (see GridStateFn) and the flat indices (over all stages, in order) of the
  # blocks that call it; None = every block.
  state_feature_fn: Optional[GridStateFn] = None
  state_blocks: Optional[tuple[int, ...]] = None
  remat: bool = False                     # recompute each block in the backward pass (Gen)

  @property
  def stage_dims(self) -> tuple[int, ...]:
    return tuple(self.dims * 2 ** i for i in range(len(self.depths)))

  @property
  def depth(self) -> int:
    """Number of VSS blocks over all stages (Gen's flat block index runs over them)."""
    return sum(self.depths)

  def block_index(self) -> list[tuple[int, int]]:
    """(stage, block in stage) of every flat block index."""
    return [(i, j) for i, depth in enumerate(self.depths) for j in range(depth)]

  def stage_grids(self) -> tuple[tuple[int, int], ...]:
    """The token grid (H, W) of each stage at img_size: the patch embed's two stride-p/2 convs,
    then a stride-2 k3 p1 conv (ceil halving) per downsample."""
    stride = self.patch_size // 2
    embed = lambda n: conv_output_size(n, stride + 1, stride, 1)
    return downsampled_grids(embed(embed(self.img_size)), len(self.depths))

  def stage(self, i: int, name: Optional[str] = None) -> Stage:
    """Stage i's module (unbound without a name: `models.blockwise` runs its parts)."""
    dims = self.stage_dims
    out_dim = dims[i + 1] if i + 1 < len(dims) else None
    first = sum(self.depths[:i])
    hooked = tuple(j for j in range(self.depths[i])
                   if self.state_blocks is None or first + j in self.state_blocks)
    return Stage(dims[i], self.depths[i], out_dim, self.d_state, self.ssm_ratio, self.dt_rank,
                 self.d_conv, self.conv_bias, self.mlp_ratio, self.dtype,
                 self.scan_implementation, quant_implementation=self.quant_implementation,
                 state_feature_fn=self.state_feature_fn, hooked_blocks=hooked,
                 remat=self.remat, **_named_or_unbound(name))

  def setup(self):
    # Defined here so `embed` and `classify` also run on their own (`models.blockwise`).
    self.patch_embed = PatchEmbedV2(self.dims, self.patch_size, self.dtype)
    self.layers = [self.stage(i, f'layers_{i}') for i in range(len(self.depths))]
    self.classifier_norm = LayerNorm()
    self.classifier_head = layers.Linear(
        self.num_classes, use_bias=True, dtype=jnp.float32,
        kernel_init=nn.initializers.truncated_normal(0.02),
        quant_implementation=self.quant_implementation)

  def embed(self, images):
    """NHWC images -> the first stage's input (B, H/p, W/p, dims)."""
    check_nhwc_images(images, self.in_chans, 'VMamba')
    return self.patch_embed(images.astype(self.dtype))

  def classify(self, x, stream=None):
    """The last stage's output -> fp32 logits: LN, global average pool, head. With `stream`
    (`models.blockwise`'s (branch, x)) the output is `stream`, as in `VSSBlock`."""
    x = self.classifier_norm(x if stream is None else stream)
    return self.classifier_head(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))

  def __call__(self, images):
    x = self.embed(images)
    for stage in self.layers:
      x = stage(x)
    return self.classify(x)

"""MambaVision (NVlabs/MambaVision `mambavision/models/mamba_vision.py`) in Flax linen.

The hybrid of the released classifiers (mamba_vision_T / _B, ImageNet-1K):

  patch embed: conv 3x3 s2 (in_dim, no bias) -> BN -> ReLU -> conv 3x3 s2 (dim) -> BN -> ReLU
  stages 1-2 (conv): ConvBlocks x + [conv3x3 -> BN -> tanh-GELU -> conv3x3 -> BN](x)
  stages 3-4 (hybrid): the grid is zero-padded (bottom/right) to whole windows and cut into
    ws x ws windows of row-major tokens; in each window the first half of the blocks (depth // 2,
    rounded up for odd depths) mix with `MambaVisionMixer`, the rest with self-attention; a
    block is x + g1 * mixer(LN(x)), then x + g2 * MLP(LN(x)) (g = layer scale, B only)
  downsample after stages 1-3: conv 3x3 s2 (2x width, no bias)
  classifier: BN -> global average pool -> head

The mixer (official `MambaVisionMixer`, d_state 8, d_conv 3, expand 1): in_proj splits into x
and z (half width each); both get a non-causal ('same'-padded) depthwise conv1d without bias
and SiLU; x runs the selective scan (no z gate: Vim's SiLU(z) gate is replaced by the
concatenated symmetric branch z) and out_proj maps [y, z] back. Official quirk kept: the
dt_proj Linear adds its bias and the scan adds it again as `delta_bias`, so
Δ = softplus(W dt + 2 b).

BatchNorm keeps the torch names (weight, bias, running_mean, running_var) as params, so every
stage that runs `{'params': params}` evaluates it as torch's eval mode; `train_batch_norm=True`
normalizes by the batch instead and stores the batch statistics in the 'batch_stats'
collection (training: `layers.merge_batch_stats`).

NHWC throughout; param names follow the official ones (`levels_2/blocks_3/mixer/in_proj` is
`levels.2.blocks.3.mixer.in_proj`; `patch_embed/conv_down_0` is `patch_embed.conv_down.0`),
mapped by `ouromamba_jax.io.mambavision_keys`.

Gen on MambaVision (issue 21 item 3): with a `state_feature_fn`, the hooked mixers
(`state_blocks`: indices into `mixer_blocks()`, the SSM blocks of stages 3-4) also return their
scan's states; the hook gets them per window, (B*nW, ws*ws, Di/2, N) with Δ (after softplus)
and C, in the window's row-major token order (the order the mixer scans), plus
grid_size=(ws, ws) and windows=nW, and what it returns is sown as the mixer's 'state_features'.
The loss itself is `ouromamba_jax.gen.windows` (DEVIATIONS.md).
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
from ouromamba_jax.models.vmamba import LayerNorm
from ouromamba_jax.models.vmamba import Mlp
from ouromamba_jax.models.vmamba import check_nhwc_images
from ouromamba_jax.models.vmamba import conv2d
from ouromamba_jax.models.vmamba import conv_output_size
from ouromamba_jax.models.vmamba import downsampled_grids
from ouromamba_jax.models.vmamba import normalize

HYBRID_STAGES = (2, 3)   # the stages built of mixer/attention blocks (the others are conv)

# Called per hooked mixer with (states (B*nW, P, Di, N) fp32, delta (B*nW, P, Di) after softplus,
# C (B*nW, P, N)), each window's P = ws*ws tokens in row-major order, the windows of an image
# consecutive (`window_partition`), and grid_size=(ws, ws), windows=nW; whatever it returns is
# sown into 'intermediates' as the mixer's 'state_features'.
WindowStateFn = Callable[..., Any]


def attention_blocks(depth: int) -> range:
  """Indices of a hybrid stage's self-attention blocks (official `transformer_blocks`)."""
  return range(depth // 2 + 1, depth) if depth % 2 else range(depth // 2, depth)


def window_partition(x, ws: int):
  """(B, H, W, C), H and W multiples of ws -> (B * H/ws * W/ws, ws*ws, C), row-major windows."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, ws * ws, c)


def window_reverse(windows, ws: int, h: int, w: int):
  """Inverse of `window_partition` for an h x w grid."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


def same_depthwise_conv1d(x, kernel):
  """x (B, L, C), kernel (K, C): torch Conv1d(groups=C, padding='same', no bias)."""
  k = kernel.shape[0]
  left = (k - 1) // 2
  padded = jnp.pad(x, ((0, 0), (left, k - 1 - left), (0, 0)))
  length = x.shape[1]
  return sum(padded[:, i:i + length, :] * kernel[i].astype(x.dtype) for i in range(k))


class BatchNorm(nn.Module):
  """torch BatchNorm2d over the last axis: eval mode by default (running statistics)."""
  eps: float = 1e-5
  use_batch_stats: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    weight = layers.read_param(self, 'weight', nn.initializers.ones, (c,))
    bias = layers.read_param(self, 'bias', nn.initializers.zeros, (c,))
    mean = layers.read_param(self, 'running_mean', nn.initializers.zeros, (c,))
    var = layers.read_param(self, 'running_var', nn.initializers.ones, (c,))
    x32 = x.astype(jnp.float32)
    if self.use_batch_stats:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      var = jnp.mean(jnp.square(x32 - mean), axes)
      n = x32.size // c
      if self.is_mutable_collection('batch_stats'):   # torch keeps the unbiased variance
        self.put_variable('batch_stats', 'running_mean', jax.lax.stop_gradient(mean))
        self.put_variable('batch_stats', 'running_var',
                          jax.lax.stop_gradient(var * n / max(n - 1, 1)))
    return normalize(x, mean, var, self.eps, weight, bias)


class PatchEmbed(nn.Module):
  """Two conv 3x3 (no bias) -> BN(eps 1e-4) -> ReLU, strides `strides` (official: 2, 2)."""
  in_dim: int
  dim: int
  strides: Sequence[int] = (2, 2)
  train_batch_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, (features, stride) in enumerate(zip((self.in_dim, self.dim), self.strides)):
      x = conv2d(features, 3, stride, 1, f'conv_down_{3 * i}', use_bias=False,
                 dtype=self.dtype)(x)
      x = BatchNorm(1e-4, use_batch_stats=self.train_batch_norm, name=f'conv_down_{3 * i + 1}')(x)
      x = nn.relu(x)
    return x


class ConvBlock(nn.Module):
  """x + [conv -> BN -> tanh-GELU -> conv -> BN](x), optionally scaled by `gamma`."""
  dim: int
  layer_scale: Optional[float] = None
  train_batch_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bn = lambda name: BatchNorm(use_batch_stats=self.train_batch_norm, name=name)
    y = bn('norm1')(conv2d(self.dim, 3, 1, 1, 'conv1', dtype=self.dtype)(x))
    y = nn.gelu(y, approximate=True)
    y = bn('norm2')(conv2d(self.dim, 3, 1, 1, 'conv2', dtype=self.dtype)(y))
    if self.layer_scale is not None:
      gamma = layers.read_param(self, 'gamma', nn.initializers.constant(self.layer_scale),
                                (self.dim,))
      y = y * gamma.astype(y.dtype)
    return x + y


class MambaVisionMixer(nn.Module):
  """The SSM branch (scan without gate) concatenated with the symmetric conv branch z."""
  d_model: int
  d_state: int = 8
  d_conv: int = 3
  expand: int = 1
  dt_rank: Optional[int] = None
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  state_feature_fn: Optional[WindowStateFn] = None
  windows: int = 1                        # windows per image (the hook's `windows`)

  @nn.compact
  def __call__(self, hidden):
    d_inner = int(self.expand * self.d_model)
    half = d_inner // 2
    rank = self.dt_rank or math.ceil(self.d_model / 16)
    n = self.d_state
    linear = lambda features, name, **kw: layers.Linear(
        features, dtype=self.dtype, name=name, quant_implementation=self.quant_implementation,
        kernel_init=kw.pop('kernel_init', nn.initializers.truncated_normal(0.02)), **kw)
    site = lambda t, tensor: layers.apply_site(self, f'{tensor}_quantizer', t)
    conv_init = symmetric_uniform(self.d_conv ** -0.5)

    x, z = jnp.split(linear(d_inner, 'in_proj')(hidden), 2, axis=-1)
    x = nn.silu(same_depthwise_conv1d(
        x, layers.read_param(self, 'conv1d_x', conv_init, (self.d_conv, half))))
    z = nn.silu(same_depthwise_conv1d(
        z, layers.read_param(self, 'conv1d_z', conv_init, (self.d_conv, half))))
    dt, b_mat, c_mat = jnp.split(linear(rank + 2 * n, 'x_proj')(x), [rank, rank + n], axis=-1)
    dt_proj = linear(half, 'dt_proj', use_bias=True, bias_init=dt_bias_init(),
                     kernel_init=symmetric_uniform(rank ** -0.5))
    dt = dt_proj(dt)
    dt_bias = dt_proj.variables['params']['bias']
    # Δ's site holds what enters softplus: the official scan adds dt_proj's bias a second time.
    delta = site(dt.astype(jnp.float32) + dt_bias.astype(jnp.float32), 'delta')
    a_log = layers.read_param(self, 'A_log', a_log_init, (half, n))
    d_skip = layers.read_param(self, 'D', nn.initializers.ones, (half,))
    hook = self.state_feature_fn
    a_mat, b_mat = site(layers.state_matrix(a_log), 'A'), site(b_mat, 'B')
    c_mat, d_skip = site(c_mat, 'C'), site(layers.skip_vector(d_skip), 'D')
    y = scan_api.selective_scan(
        x, delta, a_mat, b_mat, c_mat, d_skip, None, None, delta_softplus=True,
        implementation=self.scan_implementation, return_states=hook is not None)
    if hook is not None:
      y, states = y
      ws = math.isqrt(hidden.shape[1])
      self.sow('intermediates', 'state_features',
               hook(states, jax.nn.softplus(delta), c_mat.astype(jnp.float32),
                    grid_size=(ws, ws), windows=self.windows))
    y = jnp.concatenate([y.astype(self.dtype), z.astype(self.dtype)], axis=-1)
    return linear(self.d_model, 'out_proj')(y)


class Attention(nn.Module):
  """timm-style multi-head self-attention: qkv (bias) -> softmax(q k^T / sqrt(hd)) v -> proj."""
  dim: int
  num_heads: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears

  @nn.compact
  def __call__(self, x):
    if self.dim % self.num_heads:
      raise ValueError(f'attention width {self.dim} is not divisible by {self.num_heads} heads')
    b, length, _ = x.shape
    head_dim = self.dim // self.num_heads
    linear = lambda features, name, bias: layers.Linear(
        features, use_bias=bias, dtype=self.dtype, name=name,
        kernel_init=nn.initializers.truncated_normal(0.02),
        quant_implementation=self.quant_implementation)
    qkv = linear(3 * self.dim, 'qkv', self.qkv_bias)(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, length, 3, self.num_heads, head_dim), 2, 0)
    y = jax.nn.dot_product_attention(q, k, v).reshape(b, length, self.dim)
    return linear(self.dim, 'proj', True)(y)


class Block(nn.Module):
  """Pre-norm residual mixer (SSM or attention) then MLP, each scaled by gamma (layer_scale)."""
  dim: int
  num_heads: int
  attention: bool
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_scale: Optional[float] = None
  d_state: int = 8
  d_conv: int = 3
  expand: int = 1
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  state_feature_fn: Optional[WindowStateFn] = None   # the mixer's Gen hook (SSM blocks only)
  windows: int = 1

  @nn.compact
  def __call__(self, x):
    if self.attention:
      mixer = Attention(self.dim, self.num_heads, self.qkv_bias, self.dtype,
                        quant_implementation=self.quant_implementation, name='mixer')
    else:
      mixer = MambaVisionMixer(self.dim, self.d_state, self.d_conv, self.expand, None,
                               self.dtype, self.scan_implementation,
                               quant_implementation=self.quant_implementation,
                               state_feature_fn=self.state_feature_fn, windows=self.windows,
                               name='mixer')
    mlp = Mlp(int(self.dim * self.mlp_ratio), self.dtype,
              quant_implementation=self.quant_implementation, name='mlp')
    x = x + self._scale('gamma_1', mixer(LayerNorm(name='norm1')(x)))
    return x + self._scale('gamma_2', mlp(LayerNorm(name='norm2')(x)))

  def _scale(self, name, y):
    if self.layer_scale is None:
      return y
    gamma = layers.read_param(self, name, nn.initializers.constant(self.layer_scale), (self.dim,))
    return y * gamma.astype(y.dtype)


class Downsample(nn.Module):
  """conv 3x3 s2 p1 to twice the width, no bias (official `Downsample.reduction.0`)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return conv2d(2 * x.shape[-1], 3, 2, 1, 'reduction_0', use_bias=False, dtype=self.dtype)(x)


class Level(nn.Module):
  """One stage: conv blocks (stages 1-2) or windowed hybrid blocks (3-4), then the downsample."""
  dim: int
  depth: int
  hybrid: bool
  downsample: bool
  num_heads: int = 1
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_scale: Optional[float] = None
  layer_scale_conv: Optional[float] = None
  d_state: int = 8
  d_conv: int = 3
  expand: int = 1
  train_batch_norm: bool = False
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  state_feature_fn: Optional[WindowStateFn] = None
  hooked_blocks: tuple[int, ...] = ()     # the mixer blocks (of this stage) given the hook
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    if self.hybrid:
      x = self._hybrid_blocks(x)
    else:
      for j in range(self.depth):
        x = ConvBlock(self.dim, self.layer_scale_conv, self.train_batch_norm, self.dtype,
                      name=f'blocks_{j}')(x)
    if self.downsample:
      x = Downsample(self.dtype, name='downsample')(x)
    return x

  def _hybrid_blocks(self, x):
    ws = self.window_size
    _, h, w, _ = x.shape
    pad_h, pad_w = -h % ws, -w % ws
    tokens = window_partition(jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))), ws)
    attention = set(attention_blocks(self.depth))
    if self.hooked_blocks and (pad_h or pad_w):
      raise ValueError(f'Gen on MambaVision needs whole windows: a {h}x{w} grid is not a multiple '
                       f'of window_size {ws} (zero-padded cells would join the neighbourhoods).')
    windows = (h // ws) * (w // ws)
    block_cls = nn.remat(Block) if self.remat else Block
    for j in range(self.depth):
      hook = self.state_feature_fn if j in self.hooked_blocks else None
      tokens = block_cls(self.dim, self.num_heads, j in attention, self.mlp_ratio, self.qkv_bias,
                     self.layer_scale, self.d_state, self.d_conv, self.expand, self.dtype,
                     self.scan_implementation, quant_implementation=self.quant_implementation,
                     state_feature_fn=hook, windows=windows, name=f'blocks_{j}')(tokens)
    return window_reverse(tokens, ws, h + pad_h, w + pad_w)[:, :h, :w]


class MambaVision(nn.Module):
  """MambaVision classifier; NHWC images (any H, W; `img_size` only sizes init) -> fp32 logits."""
  num_classes: int = 1000
  img_size: int = 224
  in_chans: int = 3
  dim: int = 80
  in_dim: int = 32
  depths: Sequence[int] = (1, 3, 8, 4)
  num_heads: Sequence[int] = (2, 4, 8, 16)
  window_size: Sequence[int] = (8, 8, 14, 7)
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_scale: Optional[float] = None
  layer_scale_conv: Optional[float] = None
  d_state: int = 8
  d_conv: int = 3
  expand: int = 1
  stem_strides: Sequence[int] = (2, 2)   # official (2, 2); the 32x32 testbed keeps its grid
  train_batch_norm: bool = False         # True: BNs use batch statistics ('batch_stats')
  dtype: Any = jnp.float32
  scan_implementation: Optional[str] = None
  quant_implementation: Optional[str] = None  # integer-mode kernels of quantized Linears
  # Gen: the hook (see WindowStateFn) and the indices into `mixer_blocks()` of the mixers that
  # call it (None = every mixer).
  state_feature_fn: Optional[WindowStateFn] = None
  state_blocks: Optional[tuple[int, ...]] = None
  remat: bool = False                     # recompute each block in the backward pass (Gen)

  def mixer_blocks(self) -> list[tuple[int, int]]:
    """(stage, block in stage) of every SSM mixer block (stages 3-4; Gen's block index)."""
    return [(i, j) for i in HYBRID_STAGES for j in range(self.depths[i])
            if j not in attention_blocks(self.depths[i])]

  def stage_grids(self) -> tuple[tuple[int, int], ...]:
    """The token grid (H, W) of each stage at img_size: the stem's two 3x3 p1 convs, then a
    stride-2 3x3 p1 conv (ceil halving) per downsample."""
    stem = lambda n, stride: conv_output_size(n, 3, stride, 1)
    side = stem(stem(self.img_size, self.stem_strides[0]), self.stem_strides[1])
    return downsampled_grids(side, len(self.depths))

  @nn.compact
  def __call__(self, images):
    check_nhwc_images(images, self.in_chans, 'MambaVision')
    if not len(self.depths) == len(self.num_heads) == len(self.window_size) == 4:
      raise ValueError('MambaVision has 4 stages (2 conv, 2 hybrid): depths, num_heads and '
                       f'window_size need 4 entries each; got {self.depths}, {self.num_heads}, '
                       f'{self.window_size}')
    x = PatchEmbed(self.in_dim, self.dim, self.stem_strides, self.train_batch_norm, self.dtype,
                   name='patch_embed')(images.astype(self.dtype))
    mixers = self.mixer_blocks()
    for i, depth in enumerate(self.depths):
      hooked = tuple(j for m, (stage, j) in enumerate(mixers) if stage == i and (
          self.state_blocks is None or m in self.state_blocks))
      x = Level(self.dim * 2 ** i, depth, i in HYBRID_STAGES, i < 3, self.num_heads[i],
                self.window_size[i], self.mlp_ratio, self.qkv_bias, self.layer_scale,
                self.layer_scale_conv, self.d_state, self.d_conv, self.expand,
                self.train_batch_norm, self.dtype, self.scan_implementation,
                quant_implementation=self.quant_implementation,
                state_feature_fn=self.state_feature_fn,
                hooked_blocks=hooked if self.state_feature_fn is not None else (),
                remat=self.remat, name=f'levels_{i}')(x)
    x = BatchNorm(use_batch_stats=self.train_batch_norm, name='norm')(x)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    head = layers.Linear(self.num_classes, use_bias=True, dtype=jnp.float32,
                         kernel_init=nn.initializers.truncated_normal(0.02),
                         quant_implementation=self.quant_implementation, name='head')
    return head(pooled)

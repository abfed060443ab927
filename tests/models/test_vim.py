"""Flax Vim against PyTorch (fixture logits) and the hustvl semantics, piece by piece."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.io import hustvl_keys
from ouromamba_jax.checkpoints import load_checkpoint
from ouromamba_jax.models import registry
from ouromamba_jax.models import vim
from ouromamba_jax.models.vim import BiMambaV2Mixer
from ouromamba_jax.models.vim import VisionMamba
from tests.fixtures import torch_fixtures
from tests.interpreted import CPU_FAST_COMPILE
from tests.fixtures.torch_fixtures import relative_error

FP32_TOLERANCE = 1e-5  # ||out - ref|| / ||ref|| against the float64 PyTorch forward


def fixture_model(name, **overrides):
  fixture = torch_fixtures.load_model_fixture(name)
  model = VisionMamba(**{**fixture.config, **overrides})
  return fixture, model, load_checkpoint(fixture.pth, model)


@pytest.mark.parametrize('implementation', ['sequential', 'associative'])
@pytest.mark.parametrize('name', torch_fixtures.MODEL_FIXTURES)
def test_logits_match_pytorch(name, implementation):
  fixture, model, params = fixture_model(name, scan_implementation=implementation)
  logits = jax.jit(model.apply)({'params': params}, fixture.images)
  assert logits.dtype == jnp.float32 and logits.shape == fixture.logits.shape
  assert relative_error(logits, fixture.logits) <= FP32_TOLERANCE


@pytest.mark.parametrize('name', ['vim_tiny_bare_state_dict', 'vim_depth24_img32'])
def test_embedding_matches_pytorch(name):
  fixture, model, params = fixture_model(name)
  embedding = model.apply({'params': params}, fixture.images, method=VisionMamba.embed)
  assert relative_error(embedding, fixture.embedding) <= 1e-6


def params_like(model, fill=0.0, **leaves):
  """Params of `model`'s shapes, all `fill`, with some leaves replaced.

  `leaves` are hustvl keys with '.' spelled '__', holding torch-layout values.
  """
  shapes = hustvl_keys.model_param_shapes(model)
  params = jax.tree.map(lambda s: np.full(s.shape, fill, np.float32), shapes)
  table = hustvl_keys.key_table(shapes)
  for key, value in leaves.items():
    entry = table[key.replace('__', '.')]
    node = params
    for part in entry.flax_path[:-1]:
      node = node[part]
    value = np.asarray(value, np.float32).reshape(entry.hustvl_shape)
    node[entry.flax_path[-1]] = entry.layout.to_flax(value)
  return params


def test_class_token_sits_at_n_patches_div_2_after_raster_ordered_patches():
  model = VisionMamba(img_size=12, patch_size=4, d_model=4, depth=1, num_classes=2)
  gh = gw = 3
  # Channel 0 of patch (row r, col c) is the constant r * gw + c; the conv averages it.
  rows, cols = np.meshgrid(np.arange(12) // 4, np.arange(12) // 4, indexing='ij')
  images = np.zeros((1, 12, 12, 3), np.float32)
  images[0, :, :, 0] = rows * gw + cols
  kernel = np.zeros((4, 4, 3, 4), np.float32)
  kernel[:, :, 0, :] = 1.0 / 16
  pos = np.random.default_rng(0).standard_normal((1, 10, 4)).astype(np.float32)
  params = params_like(model, cls_token=np.full(4, -100.0), pos_embed=pos,
                       patch_embed__proj__weight=kernel.transpose(3, 2, 0, 1))
  tokens = model.apply({'params': params}, images, method=VisionMamba.embed)[0] - pos[0]
  assert model.cls_index == gh * gw // 2 == 4
  expected = [0, 1, 2, 3, -100, 4, 5, 6, 7, 8]  # raster patch order, cls in the middle
  np.testing.assert_allclose(tokens, np.repeat(np.array(expected, np.float32)[:, None], 4, 1),
                             atol=1e-5)


def test_first_block_residual_is_the_embedding_then_accumulates():
  fixture, model, params = fixture_model('vim_depth2_img224')
  images = fixture.images
  embedding = model.apply({'params': params}, images, method=VisionMamba.embed)
  unrolled = model.clone(scan_blocks=False)  # named blocks, so their outputs are captured
  _, state = jax.jit(lambda v, x: unrolled.apply(v, x, capture_intermediates=True))(
      {'params': params}, images)
  outputs = state['intermediates']
  hidden0, residual0 = outputs['layers_0']['__call__'][0]
  _, residual1 = outputs['layers_1']['__call__'][0]
  assert residual0.dtype == jnp.float32
  np.testing.assert_array_equal(residual0, embedding)
  np.testing.assert_array_equal(residual1, residual0 + hidden0)


# A float64 NumPy bimamba-v2 mixer in our param layout (kernel (in, out), conv kernel (K, Di)).


def _silu(x):
  return x / (1.0 + np.exp(-x))


def _softplus(x):
  return np.logaddexp(0.0, x)


def numpy_mixer(hidden, p, flip_z_for_backward=True):
  hidden = hidden.astype(np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  xz = hidden @ p['in_proj']['kernel']
  x, z = np.split(xz, 2, axis=-1)
  d_state = p['A_log'].shape[1]
  dt_rank = p['dt_proj']['kernel'].shape[0]

  def branch(x, z, sfx):
    kernel, bias = p[f'conv1d{sfx}']['kernel'], p[f'conv1d{sfx}']['bias']
    k, length = kernel.shape[0], x.shape[1]
    padded = np.concatenate([np.zeros_like(x[:, :k - 1]), x], axis=1)
    u = _silu(sum(padded[:, i:i + length] * kernel[i] for i in range(k)) + bias)
    x_dbl = u @ p[f'x_proj{sfx}']['kernel']
    dt, b_mat, c_mat = x_dbl[..., :dt_rank], x_dbl[..., dt_rank:dt_rank + d_state], \
        x_dbl[..., dt_rank + d_state:]
    delta = _softplus(dt @ p[f'dt_proj{sfx}']['kernel'] + p[f'dt_proj{sfx}']['bias'])
    a_mat = -np.exp(p['A_b_log' if sfx else 'A_log'])
    h = np.zeros((x.shape[0], x.shape[2], d_state))
    ys = []
    for t in range(length):
      h = (np.exp(delta[:, t, :, None] * a_mat) * h +
           (delta[:, t] * u[:, t])[..., None] * b_mat[:, t, None, :])
      ys.append(np.einsum('bdn,bn->bd', h, c_mat[:, t]) + p[f'D{sfx}'] * u[:, t])
    return np.stack(ys, axis=1) * _silu(z)

  y_forward = branch(x, z, '')
  z_backward = z[:, ::-1] if flip_z_for_backward else z
  y_backward = branch(x[:, ::-1], z_backward, '_b')[:, ::-1]
  return ((y_forward + y_backward) / 2) @ p['out_proj']['kernel']


def random_mixer_params(mixer, hidden, seed=0):
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(mixer.init, jax.random.key(0), hidden)['params']

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if 'A_log' in name or 'A_b_log' in name:
      return np.log(rng.uniform(0.3, 4.0, s.shape)).astype(np.float32)
    scale = 0.7 if name.endswith("['kernel']") else 0.5
    return (rng.standard_normal(s.shape) * scale).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize('batch_directions', [False, True])
@pytest.mark.parametrize('implementation', ['sequential', 'associative'])
def test_mixer_matches_numpy_reference_with_z_flipped_in_the_backward_branch(implementation,
                                                                           batch_directions):
  hidden = np.random.default_rng(1).standard_normal((2, 7, 8)).astype(np.float32)
  mixer = BiMambaV2Mixer(d_model=8, d_state=4, n_layers=1, scan_implementation=implementation,
                         batch_directions=batch_directions)
  params = random_mixer_params(mixer, hidden)
  out = np.asarray(mixer.apply({'params': params}, hidden))
  assert relative_error(out, numpy_mixer(hidden, params)) <= FP32_TOLERANCE
  # The check can tell: gating the backward branch with unflipped z is far off.
  assert relative_error(out, numpy_mixer(hidden, params, flip_z_for_backward=False)) > 1e-2


def test_directions_run_as_one_batch_when_asked_or_for_small_gpu_batches(monkeypatch):
  assert vim.directions_as_one_batch(True, 64) and not vim.directions_as_one_batch(False, 1)
  assert not vim.directions_as_one_batch(None, 1)  # this CPU: the loop (measured on GPUs only)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  small = vim.DIRECTIONS_AS_ONE_BATCH_BELOW - 1
  assert vim.directions_as_one_batch(None, small)
  assert not vim.directions_as_one_batch(None, vim.DIRECTIONS_AS_ONE_BATCH_BELOW)


def test_batched_directions_give_the_loops_logits_and_the_same_init():
  """batch_directions (the two scan directions as one vmapped batch, here through the
  interpreted Triton scan): the per-direction loop's logits to the last ulp, through the block
  scan (XLA's CPU dot may sum the vmapped product in another order than the loop's: one logit
  of six was 1 ulp off on an AMD EPYC, 2026-12-06); init (which creates the params) is
  unchanged. The mixer-level numpy check above covers it against the reference."""
  model = VisionMamba(img_size=32, patch_size=8, depth=2, d_model=16, num_classes=3,
                      scan_implementation='triton')
  images = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
  batched = model.clone(batch_directions=True)
  # init traces the forward, interpreted Triton scan included: compiled at level 0 as well
  init = lambda m: jax.jit(m.init, compiler_options=CPU_FAST_COMPILE)(
      jax.random.key(0), images[:1])['params']
  params, with_flag = init(model), init(batched)
  assert jax.tree.structure(params) == jax.tree.structure(with_flag)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(with_flag)):
    np.testing.assert_array_equal(a, b)
  forward = lambda m: jax.jit(lambda p, x: m.apply({'params': p}, x),
                              compiler_options=CPU_FAST_COMPILE)
  np.testing.assert_allclose(forward(batched)(params, images), forward(model)(params, images),
                             rtol=3e-7, atol=0)


@pytest.mark.parametrize('batch_directions', [False, True])
def test_small_batch_mixer_splits_the_triton_scan_in_time_like_the_reference(batch_directions):
  """At batch 1 the Triton scan's default config splits the sequence (49 tokens: 3 segments,
  the last one masked past the end); the mixer still matches the numpy reference, with the
  directions looped (the backward scan forming their mean) and vmapped."""
  from kernels_pallas.selective_scan import config as scan_config  # pylint: disable=g-import-not-at-top
  assert scan_config.default_block_config(16, jnp.float32, batch=1, length=49).time_segments == 3
  hidden = np.random.default_rng(5).standard_normal((1, 49, 8)).astype(np.float32)
  mixer = BiMambaV2Mixer(d_model=8, d_state=4, n_layers=1, scan_implementation='triton',
                         batch_directions=batch_directions)
  params = random_mixer_params(mixer, hidden)
  out = np.asarray(jax.jit(lambda p, x: mixer.apply({'params': p}, x),
                           compiler_options=CPU_FAST_COMPILE)(params, hidden))
  assert relative_error(out, numpy_mixer(hidden, params)) <= FP32_TOLERANCE


def _block_scan_inputs(fn, *args) -> list[tuple[int, ...]]:
  """Shapes of the inputs of the first `scan` in fn's jaxpr (the block scan's params)."""
  def find(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'scan':
        return [tuple(v.aval.shape) for v in eqn.invars]
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          inner = getattr(sub, 'jaxpr', sub)
          if hasattr(inner, 'eqns') and (found := find(inner)):
            return found
    return None
  return find(jax.make_jaxpr(fn)(*args).jaxpr)


def test_batched_directions_are_stacked_once_outside_the_block_scan():
  """With the directions vmapped, the blocks' scan receives each mixer's direction params
  already stacked (depth, 2, ...) (`vim.with_stacked_directions`): no per-block restacking
  in the scan's step. Where the two directions' trees differ, they stay as they are."""
  model = VisionMamba(img_size=32, patch_size=8, depth=2, d_model=16, num_classes=3,
                      scan_implementation='associative')
  images = np.zeros((1, 32, 32, 3), np.float32)
  params = jax.jit(model.init)(jax.random.key(0), images)['params']
  forward = lambda m: (lambda p, x: m.apply({'params': p}, x))
  batched = _block_scan_inputs(forward(model.clone(batch_directions=True)), params, images)
  looped = _block_scan_inputs(forward(model.clone(batch_directions=False)), params, images)
  assert (2, 2, 4, 32) in batched and (2, 4, 32) not in batched   # conv kernels: depth, 2, K, C
  assert (2, 4, 32) in looped and len(batched) < len(looped)
  block = params['layers_0']
  stacked = vim.with_stacked_directions(block)['mixer']
  assert vim.STACKED_DIRECTIONS in stacked and 'conv1d_b' not in stacked and 'in_proj' in stacked
  uneven = {**block, 'mixer': {**block['mixer'], 'B_quantizer': jnp.ones(3)}}  # one side only
  assert vim.with_stacked_directions(uneven) is uneven


def test_the_block_scan_unrolls_by_the_measured_rule_and_keeps_the_loops_logits(monkeypatch):
  """scan_unroll: blocks per iteration of the block scan (a given value, or unrolled on a GPU
  from UNROLL_BLOCKS_FROM samples, at any batch with the Triton scan; measured); the logits are
  the loop's."""
  assert vim.block_scan_unroll(3, 1, 24) == 3
  assert vim.block_scan_unroll(None, 64, 24) == 1  # this CPU: the loop (measured on GPUs only)
  with pytest.raises(ValueError, match='scan_unroll must be >= 1'):
    vim.block_scan_unroll(0, 64, 24)
  model = VisionMamba(img_size=32, patch_size=8, depth=3, d_model=16, num_classes=3,
                      scan_implementation='associative')
  images = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
  forward = lambda m: jax.jit(lambda p, x: m.apply({'params': p}, x),
                              compiler_options=CPU_FAST_COMPILE)
  np.testing.assert_allclose(forward(model.clone(scan_unroll=3))(params, images),
                             forward(model)(params, images), rtol=1e-6, atol=1e-6)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert vim.block_scan_unroll(None, 1, 24) == 1
  assert vim.block_scan_unroll(None, 1, 24, kernel_scan=True) == 24
  assert vim.block_scan_unroll(None, vim.UNROLL_BLOCKS_FROM, 24) == 24
  unrolls = lambda m, x: [eqn.params['unroll'] for eqn in jax.make_jaxpr(
      lambda p, x: m.apply({'params': p}, x))(params, x).jaxpr.eqns
                          if eqn.primitive.name == 'scan']
  assert unrolls(model, images) == [3]
  assert unrolls(model, images[:1]) == [1]
  assert unrolls(model.clone(scan_implementation='triton'), images[:1]) == [3]


def test_bfloat16_compute_runs_and_stays_close():
  fixture, model, params = fixture_model('vim_depth2_img224', dtype=jnp.bfloat16)
  logits = jax.jit(model.apply)({'params': params}, fixture.images)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  error = relative_error(logits, fixture.logits)
  assert 1e-4 < error < 5e-2  # bf16 really used, and still close (measured ~1.6e-2)
  np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(fixture.logits, -1))


def documented_param_count(d_model, depth=24, d_state=16, expand=2, d_conv=4, patch=16,
                           tokens=197, classes=1000):
  """Vim parameter count from the hustvl state-dict table (official_code_notes.md A.2)."""
  d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
  per_direction = (d_inner * d_conv + d_inner + (dt_rank + 2 * d_state) * d_inner +
                   dt_rank * d_inner + d_inner + d_inner * d_state + d_inner)
  block = d_model + 2 * d_inner * d_model + d_model * d_inner + 2 * per_direction
  return (d_model * 3 * patch * patch + d_model + d_model + tokens * d_model + depth * block +
          d_model + classes * d_model + classes)


@pytest.mark.parametrize('name,d_model,millions', [('vim_t', 192, 7.15), ('vim_s', 384, 25.8),
                                                   ('vim_b', 768, 97.6)])
def test_variant_param_counts(name, d_model, millions):
  shapes = hustvl_keys.model_param_shapes(registry.build_model(name))
  count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
  assert count == documented_param_count(d_model)
  assert abs(count / 1e6 - millions) < 0.01 * millions


@pytest.mark.parametrize('name,d_model,dt_rank', [('vim_t', 192, 12), ('vim_s', 384, 24),
                                                  ('vim_b', 768, 48), (None, 40, 3)])
def test_dt_rank_is_ceil_d_model_over_16(name, d_model, dt_rank):
  model = (registry.build_model(name) if name else
           VisionMamba(d_model=d_model, depth=1, img_size=16, patch_size=8, num_classes=2))
  mixer = hustvl_keys.model_param_shapes(model)['layers_0']['mixer']
  d_inner = 2 * d_model
  assert dt_rank == math.ceil(d_model / 16)
  for sfx in ('', '_b'):
    assert mixer[f'x_proj{sfx}']['kernel'].shape == (d_inner, dt_rank + 2 * 16)
    assert mixer[f'dt_proj{sfx}']['kernel'].shape == (dt_rank, d_inner)


def _stacks(fn, *args) -> int:
  """stack and concatenate equations in fn's jaxpr, sub-jaxprs included."""
  def count(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
      n += eqn.primitive.name in ('stack', 'concatenate')
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          inner = getattr(sub, 'jaxpr', sub)
          if hasattr(inner, 'eqns'):
            n += count(inner)
    return n
  return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize('batch_directions', [False, True])
def test_a_tree_with_the_directions_stacked_gives_the_same_logits(batch_directions):
  """`with_directions_stacked` (the directions' params stacked once, for inference): the plain
  tree's logits bit for bit, looped (each direction a slice) and vmapped, where the vmapped
  forward no longer stacks the params on every call; state hooks refuse the prepared tree."""
  model = VisionMamba(img_size=32, patch_size=8, depth=2, d_model=16, num_classes=3,
                      scan_implementation='xla', batch_directions=batch_directions)
  images = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
  prepared = vim.with_directions_stacked(params)
  assert set(prepared['layers_0']['mixer']) == {'in_proj', 'out_proj', vim.STACKED_DIRECTIONS}
  assert vim.with_directions_stacked(prepared) == prepared            # idempotent
  assert vim.holds_stacked_directions(prepared) and not vim.holds_stacked_directions(params)
  forward = lambda p, x: model.apply({'params': p}, x)
  np.testing.assert_array_equal(jax.jit(forward)(prepared, images),
                                jax.jit(forward)(params, images))
  if batch_directions:
    assert _stacks(forward, prepared, images) < _stacks(forward, params, images)
  hooked = model.clone(state_feature_fn=lambda states, delta, c, **kw: states.sum())
  with pytest.raises(ValueError, match='directions stacked .*state hooks'):
    hooked.apply({'params': prepared}, images, mutable=['intermediates'])

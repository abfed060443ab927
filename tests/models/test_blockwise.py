"""models.blockwise: the model's own pieces one block at a time; equal to model.apply, one
block compiles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ouromamba_jax.models import blockwise
from ouromamba_jax.models import build_model
from tests import random_init


@pytest.fixture(scope='module')
def tiny():
  model = build_model('vim_t', img_size=32, patch_size=8, depth=3, d_model=32, num_classes=10,
                      scan_implementation='sequential')
  images = jnp.asarray(random_init.normal(0, (2, 32, 32, 3)))
  return model, random_init.init_params(model, images, seed=1), images


def test_block_by_block_equals_model_apply_bit_for_bit(tiny):
  """Same Block, same programs: the scanned forward and the pieces agree exactly."""
  model, params, images = tiny
  hidden, residual = blockwise.embed(model, params, images)
  block = blockwise.block_module(model)
  for piece in blockwise.pieces(model):
    assert piece.module is block
    hidden, residual = blockwise.run_block(block, params[piece.name], hidden, residual)
  logits = model.apply({'params': params}, hidden, residual, method=model.classify)
  np.testing.assert_array_equal(np.asarray(logits),
                                np.asarray(jax.jit(model.apply)({'params': params}, images)))


def test_embed_is_the_first_block_input_and_blocks_share_one_program(tiny):
  model, params, images = tiny
  hidden, residual = blockwise.embed(model, params, images)
  assert hidden.shape == (2, 17, 32) and not np.any(np.asarray(residual))
  block = blockwise.block_module(model)
  assert blockwise.block_module(model) is block        # cached: jitted functions are reused
  out, residual = blockwise.run_block(block, params['layers_0'], hidden, residual)
  np.testing.assert_array_equal(np.asarray(residual), np.asarray(hidden, np.float32))
  assert out.shape == hidden.shape
  before = blockwise.run_block._cache_size()
  for piece in blockwise.pieces(model):
    out, residual = blockwise.run_block(block, params[piece.name], out, residual)
  assert blockwise.run_block._cache_size() == before   # no new compilation for the other blocks


def test_stages_walk_every_block_then_the_classifier_for_each_tree(tiny):
  model, params, images = tiny
  doubled = jax.tree.map(lambda p: p * 1.01, params)   # a second tree, run side by side
  pieces = list(blockwise.stages(model, [params, doubled], images))
  assert [p[0] for p in pieces] == ['layers_0/', 'layers_1/', 'layers_2/', '']
  prefix, module, method, subtrees, inputs = pieces[-1]
  assert module is model and method is not None and len(subtrees) == len(inputs) == 2
  for tree, stream in zip([params, doubled], inputs):   # each stream is its own tree's
    np.testing.assert_allclose(
        np.asarray(module.apply({'params': tree}, *stream, method=method)),
        np.asarray(model.apply({'params': tree}, images)), rtol=1e-5, atol=1e-6)


def test_vmamba_pieces_walk_every_stage_and_equal_model_apply():
  """VMamba's pieces: every stage's blocks, the float downsample after a stage's last block;
  the stream (branch, x) run piece by piece gives the model's logits."""
  from ouromamba_jax.models.vmamba import VMamba
  from ouromamba_jax.quant import rewrite
  model = VMamba(num_classes=5, img_size=16, dims=8, depths=(2, 1), ssm_ratio=2.0,
                 scan_implementation='xla')
  images = jnp.asarray(random_init.normal(0, (2, 16, 16, 3)))
  params = random_init.init_params(model, images, seed=1)
  pieces = blockwise.pieces(model)
  assert [(p.name, p.after_name) for p in pieces] == [
      ('layers_0/blocks_0', ''), ('layers_0/blocks_1', 'layers_0/downsample'),
      ('layers_1/blocks_0', '')]
  assert blockwise.piece_of(model, 'layers_0/blocks_1/op/A_quantizer') == 1
  assert blockwise.piece_of(model, 'classifier_head/kernel') is None
  hidden, x = blockwise.embed(model, params, images)
  for piece in pieces:
    x_in = x
    hidden, x = blockwise.run_block(piece.module, rewrite.get_path(params, piece.name), hidden, x)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(x - x_in), rtol=1e-6, atol=1e-6)
    if piece.after is not None:
      hidden, x = blockwise.run_after(piece.after, rewrite.get_path(params, piece.after_name),
                                      hidden, x)
  logits = model.apply({'params': params}, x, method=VMamba.classify)
  np.testing.assert_allclose(np.asarray(logits),
                             np.asarray(jax.jit(model.apply)({'params': params}, images)),
                             rtol=1e-5, atol=1e-6)


def test_a_model_without_blocks_is_one_whole_forward_piece():
  """MambaVision (no block-by-block form) is reported as one piece: the model on the images."""
  from ouromamba_jax.models.mambavision import MambaVision
  model = MambaVision(num_classes=5, img_size=16, dim=8, in_dim=8, depths=(1, 1, 2, 2),
                      num_heads=(1, 1, 2, 2), window_size=(8, 8, 4, 2), stem_strides=(1, 1))
  images, trees = jnp.zeros((1, 16, 16, 3)), [{'a': 1}, {'a': 2}]
  assert not blockwise.supports(model)
  assert list(blockwise.stages(model, trees, images)) == [
      ('', model, None, trees, [(images,), (images,)])]

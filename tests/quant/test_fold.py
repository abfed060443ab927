"""Parameter-only sites (A, D) folded into constants: same logits, bit for bit, in both modes."""
import numpy as np
import pytest

from ouromamba_jax import quant
from ouromamba_jax.quant import fold, qtypes, rewrite


def _sites(tree, kind, prefix=''):
  """path -> object of `kind` in a nested-dict param tree."""
  found = {}
  for key, value in tree.items():
    path = f'{prefix}/{key}' if prefix else key
    if isinstance(value, kind):
      found[path] = value
    elif isinstance(value, dict):
      found.update(_sites(value, kind, path))
  return found


@pytest.mark.parametrize('mode', ['fake', 'int'])
def test_folded_tree_gives_the_same_logits(tiny, apply_fn, w4a4_untrained_run, mode):
  qparams = rewrite.set_mode(w4a4_untrained_run[0], mode)
  folded = quant.fold_parameter_sites(qparams)
  images = tiny[2]   # the quant tests' batch: the suite's compilation cache holds these forwards
  np.testing.assert_array_equal(np.asarray(apply_fn(folded, images)),
                                np.asarray(apply_fn(qparams, images)))
  # 2 blocks x 2 directions x (A, D); every other leaf is the same object as before
  folded_sites = _sites(folded, qtypes.FoldedSite)
  assert len(folded_sites) == 8 and all(v.mode == mode for v in folded_sites.values())
  assert all(p.rsplit('/', 1)[1] in ('A_quantizer', 'A_b_quantizer', 'D_quantizer',
                                     'D_b_quantizer') for p in folded_sites)
  before, after = _sites(qparams, qtypes.ActQuantizer), _sites(folded, qtypes.ActQuantizer)
  assert set(before) - set(after) == set(folded_sites)
  assert all(after[p] is before[p] for p in after)
  if mode == 'int':   # the GPU's batch-1 form: both directions vmapped over stacked params
    batched = tiny[0].clone(batch_directions=True)
    run = lambda tree: np.asarray(batched.apply({'params': tree}, images))
    np.testing.assert_array_equal(run(folded), run(qparams))


def test_folded_site_refuses_another_shape_and_a_site_without_its_parameter(w4a4_untrained_run):
  site = qtypes.FoldedSite(np.zeros((4, 2), np.float32))
  with pytest.raises(ValueError, match=r'holds a \(4, 2\) value but was called on \(3,\)'):
    site(np.zeros(3, np.float32))
  quantizer = rewrite.get_path(w4a4_untrained_run[0], 'layers_0/mixer/A_quantizer')
  with pytest.raises(ValueError, match="'A_quantizer' has no input parameter beside it"):
    fold.fold_parameter_sites({'mixer': {'A_quantizer': quantizer}})

"""Reports on tiny inputs: per-layer SQNR/cosine, outlier rates + heatmap, accuracy table."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ouromamba_jax import quant
from ouromamba_jax.models import layers
from ouromamba_jax.quant import activations as act_lib
from ouromamba_jax.quant import rewrite
from ouromamba_jax.reports import accuracy
from ouromamba_jax.reports import capture
from ouromamba_jax.reports import curves
from ouromamba_jax.reports import heatmap
from ouromamba_jax.reports import layer_error
from ouromamba_jax.reports import outliers
from tests.quant.conftest import (  # pylint: disable=unused-import
    apply_fn, rtn_run, tiny, w4a4_untrained_run)


def _linear_io(model, params, images):
  """{Linear path: (input, output)} of a whole forward run module by module, as the reports
  capture them (traceable)."""
  return capture.module_linear_io(layers.module_by_module(model), params, images)


@pytest.fixture(scope='module')
def w4a4(w4a4_untrained_run):
  """OuroMamba W4A4 without training: the quant tests' tree (one calibration per worker, its
  programs compiled as theirs were, so the suite's compilation cache serves them)."""
  return w4a4_untrained_run[0]


@pytest.mark.slow
def test_layer_errors_on_tiny_model(tiny, w4a4):
  model, params, images = tiny
  rows = layer_error.layer_errors(model, params, w4a4, images[:4], batch_size=3)
  assert len(rows) == 12                                   # 2 blocks x 6 Linears
  by_layer = {r['layer']: r for r in rows}
  first = by_layer['layers_0/mixer/in_proj']
  # The first Linear sees the same input in both models: network error == local error.
  assert first['sqnr_db'] == pytest.approx(first['local_sqnr_db'], rel=1e-6)
  for r in rows:
    assert 0 < r['sqnr_db'] < 120 and 0.5 < r['cosine'] <= 1.0 + 1e-6
    assert r['block'] in (0, 1)
  # Cross-check one SQNR by hand.
  fp = _linear_io(model, params, images[:4])['layers_1/mixer/out_proj'][1]
  q = _linear_io(model, w4a4, images[:4])['layers_1/mixer/out_proj'][1]
  want = 10 * np.log10(float(jnp.sum(fp ** 2)) / float(jnp.sum((q - fp) ** 2)))
  assert by_layer['layers_1/mixer/out_proj']['sqnr_db'] == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_layer_errors_order_w8a8_better_than_w4a4(tiny, w4a4):
  model, params, images = tiny
  spec = quant.QuantRunSpec(preset='w8a8', epochs=0, micro_batch=8).quant_spec()
  w8a8, _ = quant.quantize(model, params, images, spec, log=lambda _: None)
  r4 = layer_error.layer_errors(model, params, w4a4, images[:4])
  r8 = layer_error.layer_errors(model, params, w8a8, images[:4])
  assert np.mean([r['sqnr_db'] for r in r8]) > np.mean([r['sqnr_db'] for r in r4]) + 10


def test_layer_report_files_in_block_order_with_sqnr_explained(tmp_path):
  row = lambda layer, block: {'layer': layer, 'block': block, 'sqnr_db': 20.0, 'cosine': 0.99,
                              'local_sqnr_db': 21.0, 'local_cosine': 0.995}
  rows = [row('head', None), row('layers_10/mixer/in_proj', 10), row('layers_2/mixer/x_proj', 2),
          row('layers_2/mixer/in_proj', 2)]
  layer_error.write(str(tmp_path), rows, images=4)
  with open(tmp_path / 'layers.json') as f:
    assert json.load(f)['layers'] == rows
  md = (tmp_path / 'layers.md').read_text()
  assert '| layers_2/mixer/x_proj | 20.00 | 0.99000 |' in md
  order = [line.split(' | ')[0][2:] for line in md.splitlines()
           if line.startswith('| ') and not line.startswith('| layer |')]
  assert order == ['layers_2/mixer/x_proj', 'layers_2/mixer/in_proj', 'layers_10/mixer/in_proj',
                   'head']                     # by block number (stable inside), head last
  assert layer_error.SQNR_LINE in md and 'each 6 dB is about one bit' in md


def test_layer_report_orders_vmamba_blocks_naturally():
  """VMamba's paths hold a stage and a block number: blocks_10 comes after blocks_2."""
  row = lambda layer: {'layer': layer, 'block': None, 'sqnr_db': 20.0, 'cosine': 0.99,
                       'local_sqnr_db': 21.0, 'local_cosine': 0.995}
  layers = ['classifier_head', 'layers_1/blocks_0/op/in_proj', 'layers_0/blocks_10/op/in_proj',
            'layers_0/blocks_2/op/out_proj', 'layers_0/blocks_2/op/in_proj']
  md = layer_error.to_markdown([row(layer) for layer in layers])
  order = [line.split(' | ')[0][2:] for line in md.splitlines()
           if line.startswith('| ') and not line.startswith('| layer |')]
  assert order == ['layers_0/blocks_2/op/out_proj', 'layers_0/blocks_2/op/in_proj',
                   'layers_0/blocks_10/op/in_proj', 'layers_1/blocks_0/op/in_proj',
                   'classifier_head']


def test_outlier_rates_match_detect_outliers(tiny, w4a4, tmp_path):
  model, _, images = tiny
  # two batches of 2: the counts add up over batches, and each piece's counting program
  # compiles for one batch shape (3 + 1 compiled two)
  rates = outliers.outlier_rates(model, w4a4, images[:4], batch_size=2)
  assert rates['tokens'] == 17 and len(rates['blocks']) == 2 and len(rates['sites']) == 12
  assert rates['cls_index'] == model.cls_index == 8
  assert outliers.caption(rates).endswith(
      'on 4 images, mean over the block\'s inputs to mixer/dt_proj, mixer/dt_proj_b, '
      'mixer/in_proj, mixer/out_proj, mixer/x_proj, mixer/x_proj_b')
  grid = np.asarray(rates['blocks'])
  assert grid.shape == (2, 17) and np.all((grid >= 0) & (grid <= 1))
  # One forward site and one backward site by hand (backward rates are flipped to token order).
  checked = (('layers_1/mixer/out_proj', False), ('layers_0/mixer/x_proj_b', True))
  # one jitted forward: op by op, the unrolled quantized forward dispatched for a minute
  inputs = jax.jit(lambda t, x: {p: _linear_io(model, t, x)[p][0] for p, _ in checked})(
      w4a4, images[:4])
  for path, flip in checked:
    q = rewrite.get_path(w4a4, f'{path}/input_quantizer')
    mask = act_lib.detect_outliers(inputs[path], q.inlier_scale, q.spec)
    want = np.asarray(jnp.mean(mask.astype(jnp.float32), axis=(0, 2)))
    np.testing.assert_allclose(rates['sites'][path], want[::-1] if flip else want, atol=1e-6)
  assert grid.max() > 0                                     # outliers do fire on this model
  png = outliers.write(str(tmp_path), rates, title='tiny')
  image = Image.open(png)
  assert image.mode == 'RGB' and image.size[0] > 17 * 3 and image.size[1] > 2 * 4


def test_no_outlier_sites_give_empty_rates(tiny, rtn_run, tmp_path):
  model, _, images = tiny
  rates = outliers.outlier_rates(model, rtn_run[0], images[:2])
  assert rates['sites'] == {} and rates['blocks'] == []
  assert outliers.write(str(tmp_path), rates) is None
  assert os.path.exists(tmp_path / 'outliers.json')


def test_heatmap_colours_and_nan():
  rgb = heatmap.colormap(np.asarray([0.0, 1.0, np.nan]))
  assert tuple(rgb[0]) == (68, 1, 84) and tuple(rgb[1]) == (253, 231, 37)
  assert tuple(rgb[2]) == heatmap.NAN_COLOR
  image = heatmap.render(np.asarray([[0.0, 0.5], [np.nan, 1.0]]), title='t', x_label='token',
                         y_label='block')
  assert image.size[0] > 40 and image.size[1] > 20
  with pytest.raises(ValueError, match='non-empty 2-D grid'):
    heatmap.render(np.zeros((0, 3)))


def test_heatmap_marks_a_column_and_widens_for_its_caption():
  grid = np.zeros((2, 17))
  plain = heatmap.render(grid)
  marked = heatmap.render(grid, bar_label='outlier rate', mark_column=8, mark_label='cls',
                          caption='x' * 200)
  assert marked.size[0] > plain.size[0] and marked.size[1] > plain.size[1]
  pixels = np.asarray(marked)
  cw = ch = 16                                   # cells of a 2 x 17 grid
  column_left = pixels[36:36 + 2 * ch, 48 + 8 * cw]
  assert (column_left == heatmap.MARK_COLOR).all(axis=-1).all()   # outlined over every row
  with pytest.raises(ValueError, match='mark_column 17 is outside the 17 columns'):
    heatmap.render(grid, mark_column=17)


def test_loss_curves_one_panel_per_term_one_line_per_group(tmp_path):
  groups = [{'group': g, 'total': [3.0 + g, 2.0, 1.0 - g], 'pse': [1.0, 0.5, float('nan')]}
            for g in range(10)]
  panels = curves.gen_panels(groups, ['total', 'pse'])
  assert [title for title, _ in panels] == ['total', 'pse']
  assert list(panels[0][1]) == [f'group {g}' for g in range(1, 9)]   # the first eight
  curves.write_png(str(tmp_path / 'c.png'), panels, caption='c')
  image = Image.open(tmp_path / 'c.png')
  assert image.size[0] == 2 * curves.PANEL_W
  assert image.size[1] > curves.PANEL_H + 16                 # a legend row under the panels
  colors = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
  assert set(curves.LINE_COLORS) <= colors                 # every group's line is drawn
  blocks = [{'loss_init': 0.2, 'loss_final': 0.1}, {'loss_init': 0.0, 'loss_final': 0.0}]
  (title, lines), = curves.calibration_panels(blocks)
  assert 'reconstruction loss' in title and lines == {'init': [0.2, 0.0], 'final': [0.1, 0.0]}
  with pytest.raises(ValueError, match='at least one panel'):
    curves.render([])


def test_curves_error_bars_tick_labels_and_one_colour_per_line():
  """A study's figure: labelled x ticks, ± bars, and the same line in the same colour in every
  panel (the legend names it once)."""
  panels = [('top-1', {'a': [1.0, 2.0, 3.0], 'b': [3.0, 2.0, 1.0]}, {'a': [0.0, 0.5, 0.0]}),
            ('rate', {'b': [0.1, 0.2, 0.3], 'a': [0.3, 0.2, 0.1]})]
  plain = np.asarray(curves.render(panels[:1], columns=1, panel_width=400))
  no_bars = np.asarray(curves.render([panels[0][:2]], columns=1, panel_width=400))
  assert plain.shape == no_bars.shape == (curves.PANEL_H + 18, 400, 3)
  assert (plain != no_bars).any()                           # the bar at x = 2 is drawn
  ticks = np.asarray(curves.render(panels, columns=1, x_ticks=['k=2', 'k=3', 'k=4']))
  numbers = np.asarray(curves.render(panels, columns=1))
  assert (ticks != numbers).any()
  blue, red = curves.LINE_COLORS[:2]
  both = np.asarray(curves.render(panels, columns=1))
  lower = both[curves.PANEL_H:2 * curves.PANEL_H]            # the second panel: 'b' first there
  assert (lower == blue).all(axis=-1).any() and (lower == red).all(axis=-1).any()
  assert curves.render([('one', {'only': [1.0, 2.0]})]).size[1] == curves.PANEL_H   # no legend


def test_accuracy_table_markdown_and_json(tmp_path):
  fp = {'top1': 0.8, 'top5': 0.99}
  runs = [
      {'name': 'rtn_w4a4_real', 'method': 'rtn', 'preset': 'w4a4', 'calib_source': 'real',
       'calib_images': 32, 'top1': 0.5, 'top5': 0.9, 'calibration_seconds': 12.3},
      {'name': 'ouromamba_w4a4_gen', 'method': 'ouromamba', 'preset': 'w4a4',
       'calib_source': 'gen', 'calib_images': 32, 'top1': 0.79, 'top5': 0.98},
      {'name': 'ouromamba_w8a8_gen', 'method': 'ouromamba', 'preset': 'w8a8',
       'calib_source': 'gen', 'calib_images': 32, 'top1': 0.8, 'top5': 0.99},
  ]
  md_path, json_path = accuracy.write(str(tmp_path), fp, runs, {'eval_images': 500},
                                      title='T', notes=['a note'])
  md = open(md_path).read()
  assert '| method + calibration data | W8A8 | W4A4 |' in md
  assert '| FP | 80.00 | 80.00 |' in md
  assert '| RTN (real) | – | 50.00 (-30.00) |' in md
  assert '| OuroMamba + Gen | 80.00 (+0.00) | 79.00 (-1.00) |' in md
  assert '| rtn_w4a4_real | rtn | w4a4 | real | 32 | 50.00 | 90.00 | 12 |' in md
  assert '- a note' in md
  with open(json_path) as f:
    doc = json.load(f)
  assert doc['fp'] == fp and doc['runs'] == runs and doc['meta'] == {'eval_images': 500}


def test_mean_outlier_rate_of_a_run_directory(tmp_path):
  assert outliers.mean_rate(str(tmp_path)) is None                 # no report written
  (tmp_path / outliers.JSON_FILE).write_text(json.dumps({'sites': {}}))
  assert outliers.mean_rate(str(tmp_path)) is None                 # no outlier sites
  (tmp_path / outliers.JSON_FILE).write_text(
      json.dumps({'sites': {'a': [0.1, 0.3], 'b': [0.4, 0.4, 0.4]}}))
  assert abs(outliers.mean_rate(str(tmp_path)) - 0.3) < 1e-12      # mean of the sites' means


def test_capture_sees_every_linear_when_the_directions_are_vmapped(tiny):
  """The GPU's rule vmaps a small batch's two directions (x_proj/dt_proj become pure
  functions); the captures run module by module, so they see the same Linears either way."""
  model, params, images = tiny
  vmapped = model.clone(batch_directions=True)
  want = set(_linear_io(model, params, images[:2]))
  assert {'layers_0/mixer/x_proj', 'layers_1/mixer/dt_proj_b'} <= want
  assert set(_linear_io(vmapped, params, images[:2])) == want
  paths = sorted(want)
  got = capture.per_piece(vmapped, (params,), images[:2], paths,
                          lambda module, method, own, tree, inputs: {
                              p: 0 for p in capture.module_linear_io(module, tree, *inputs,
                                                                     method=method) if p in own})
  assert set(got) == want

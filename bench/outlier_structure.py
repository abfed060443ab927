"""How compact are the dynamic outlier sets? What a compact-list outlier GEMM would walk.

  python bench/outlier_structure.py --data_dir=../shared/data/cifar10 --out=structure.json
  python bench/outlier_structure.py --smoke --out=/tmp/structure.json       # tiny, seconds

The integer GEMM adds the outliers' product as a second int8 product over K (issue 15); a
compact list would walk only the channels flagged in a tile of rows, so its work follows the
size of those unions, not the entry rate. This measures them on a model quantized with the
OuroMamba W4A4 quantizer (initial static scales, no reconstruction: the outlier detection only
needs the inlier scales): per quantized Linear input, the entry rate (flagged (token, channel)
entries), the window-set size (one sample's outlier set at the end of a refresh window, the
union of its steps: what a per-window list holds) as a fraction of K, with its 99th percentile
(a list capacity that 99 % of windows fit), and the union over tiles of `--tiles` GEMM rows
(tokens of consecutive samples, as the GEMM sees them; the first tile size is the table's), and
for that tile the share of (tile, K block) pairs holding any outlier (`kblock_busy@B`): the
outlier MMAs a dense walk that skips empty K blocks would still run. Two models of one architecture: the
bundled CIFAR testbed (trained) and the same architecture at random init (what the latency
benches use). CPU is enough; the numbers do not depend on the device.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ouromamba_jax import quant  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.io import atomic  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.quant import rewrite  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.reports import capture  # pylint: disable=g-import-not-at-top,wrong-import-position
from ouromamba_jax.reports import outliers  # pylint: disable=g-import-not-at-top,wrong-import-position

STATS = ('entry_rate', 'window_set', 'window_set_p99', 'tile_union', 'tile_union_max')
TILES = (64, 16, 32, 128)
K_BLOCKS = (32, 64)
_STAGE_MASKS = jax.jit(outliers.piece_masks, static_argnums=(0, 1, 2))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data_dir', default='../shared/data/cifar10',
                 help='CIFAR-10 archives (test.tar.gz): calibration and measured images')
  p.add_argument('--calib_images', type=int, default=32)
  p.add_argument('--images', type=int, default=64, help='images the sets are measured on')
  p.add_argument('--tiles', default=','.join(map(str, TILES)),
                 help='GEMM rows per tile (block_m), comma-separated; the first is the table\'s')
  p.add_argument('--preset', default='w4a4')
  p.add_argument('--smoke', action='store_true', help='a tiny random model, random images')
  p.add_argument('--out', default='')
  return p.parse_args(argv)


def set_stats(mask, n_refresh: int, tiles) -> dict[str, float]:
  """STATS of one site's outlier mask (B, L, K) bool, as fractions of K (entry rate: of B·L·K);
  tile_union(_max) for the first of `tiles`, and `tile_union@T` for each."""
  batch, length, k = mask.shape
  m = np.asarray(mask)
  ends = np.minimum(np.arange(n_refresh - 1, length + n_refresh - 1, n_refresh), length - 1)
  window = m[:, ends, :].mean(axis=2).ravel()       # the cumulative set at each window's end
  out = {'entry_rate': float(m.mean()), 'window_set': float(window.mean()),
         'window_set_p99': float(np.percentile(window, 99))}
  rows = m.reshape(batch * length, k)
  for i, tile in enumerate(tiles):
    tile_any = np.pad(rows, ((0, -len(rows) % tile), (0, 0))).reshape(-1, tile, k).any(axis=1)
    union = tile_any.mean(axis=1)                    # (tiles,) flagged share of K per tile
    out[f'tile_union@{tile}'] = float(union.mean())
    if i == 0:
      out['tile_union'], out['tile_union_max'] = float(union.mean()), float(union.max())
      for kb in K_BLOCKS:
        blocks = np.pad(tile_any, ((0, 0), (0, -k % kb))).reshape(len(tile_any), -1, kb)
        out[f'kblock_busy@{kb}'] = float(blocks.any(axis=2).mean())
  return out


def measure(model, params, calib, images, preset: str, tiles) -> dict:
  """Quantizes `params` (initial scales, no training) and measures every outlier site."""
  spec = quant.QuantRunSpec(preset=preset, epochs=0).quant_spec()
  qparams, _ = quant.quantize(model, params, calib, spec, log=lambda _: None)
  paths = tuple(outliers.outlier_sites(qparams))
  masks = capture.per_piece(model, (qparams,), images, paths, _STAGE_MASKS)
  sites = {}
  for path in paths:
    n_refresh = rewrite.get_path(qparams, path)['input_quantizer'].spec.n_refresh
    sites[path] = {'k': int(masks[path].shape[-1]), **set_stats(masks[path], n_refresh, tiles)}
  by_layer = {}      # the same Linear of every block together (in_proj, x_proj, ...)
  for path, s in sites.items():
    by_layer.setdefault(path.split('/')[-1], []).append(s)
  stats = [c for c in next(iter(sites.values()), {}) if c != 'k']
  summary = {name: {stat: float(np.mean([s[stat] for s in group])) for stat in stats}
             for name, group in sorted(by_layer.items())}
  return {'sites': sites, 'by_linear': summary,
          'all': {stat: float(np.mean([s[stat] for s in sites.values()])) for stat in stats}}


def _models(args):
  """(name, model, params) pairs and (calibration, measured) images."""
  from configs import common  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.data import cifar10  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.data import normalization  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from ouromamba_jax.stages import sections  # pylint: disable=g-import-not-at-top
  if args.smoke:
    model = build_model('vim_t', img_size=32, patch_size=8, depth=2, d_model=32, num_classes=10,
                        scan_implementation='sequential')
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((args.calib_images + args.images, 32, 32, 3)),
                         jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
    return [('random_init', model, params)], images[:args.calib_images], images[args.calib_images:]
  model_cfg = common.model_config('vim_t_cifar10')
  model_cfg.checkpoint = 'bundled'
  model, trained = sections.load_model(model_cfg)
  split = cifar10.load('test', data_dir=args.data_dir, use_tfds=False)
  images = normalization.normalize(split.images[:args.calib_images + args.images],
                                   cifar10.MEAN, cifar10.STD)
  images = jnp.asarray(images, jnp.float32)
  random_params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']
  return ([('trained', model, trained), ('random_init', model, random_params)],
          images[:args.calib_images], images[args.calib_images:])


def main(argv=None):
  args = parse_args(argv)
  tiles = tuple(int(t) for t in args.tiles.split(','))
  models, calib, images = _models(args)
  report = {'preset': args.preset, 'tiles': list(tiles), 'calib_images': int(calib.shape[0]),
            'images': int(images.shape[0]), 'models': {}}
  for name, model, params in models:
    report['models'][name] = measure(model, params, calib, images, args.preset, tiles)
    print(f'{name}: fractions of K (entry rate: of all entries)')
    columns = list(report['models'][name]['all'])
    print(f'  {"linear":<12}' + ''.join(f'{c:>16}' for c in columns))
    for linear, s in list(report['models'][name]['by_linear'].items()) + [
        ('all', report['models'][name]['all'])]:
      print(f'  {linear:<12}' + ''.join(f'{s[c]:>16.4f}' for c in columns))
  if args.out:
    atomic.write_json(args.out, report)
  return report


if __name__ == '__main__':
  main()

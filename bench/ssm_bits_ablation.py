"""Which SSM tensor needs more than 4 bits? W4A4 OuroMamba with one group of SSM sites widened.

  PYTHONPATH=. python bench/ssm_bits_ablation.py --gen=workdir/results/gen/synthetic.npz \
      --groups=A,D,B,C,AD,BC --bits=8 --out=ssm_ablation.json

For each group it prepends a rule for those sites (first match wins, so the rest of the W4A4
plan is untouched), calibrates on the given images (the config's quant settings: epochs,
micro-batch, ...) and scores the bundled testbed on the pipeline's seeded test slice. Runs on
CPU (2-3 minutes per group at 16 images x 2 epochs, 500 test images).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import time

import numpy as np

from configs import vim_t_cifar10
from ouromamba_jax.io import atomic
from ouromamba_jax.quant import api
from ouromamba_jax.quant import config as qconfig
from ouromamba_jax.quant import presets
from ouromamba_jax.stages import evaluate as evaluate_stage
from ouromamba_jax.stages import quantize as quantize_stage
from ouromamba_jax.stages import sections

GROUPS = {'A': 'A', 'D': 'D', 'B': 'B', 'C': 'C', 'AD': '(A|D)', 'BC': '(B|C)',
          'delta': 'delta'}


def widened_spec(base: qconfig.QuantSpec, group: str, bits: int) -> qconfig.QuantSpec:
  """`base` with the sites of `group` (both directions) at `bits`; their other settings kept."""
  pattern = fr'{presets.BLOCK}/{GROUPS[group]}(_b)?_quantizer'
  first_site = f'layers_0/mixer/{"delta" if group == "delta" else group[0]}_quantizer'
  site_spec = next(r.spec for r in base.rules if re.fullmatch(r.pattern, first_site))
  rule = qconfig.QuantRule(pattern, dataclasses.replace(site_spec, bits=bits))
  return dataclasses.replace(base, name=f'{base.name}_{group}{bits}', rules=(rule, *base.rules))


def base_spec(quant_cfg, epochs: int) -> qconfig.QuantSpec:
  """The W4A4 spec of a config's quant section (its calibration settings), `epochs` epochs."""
  spec = quantize_stage.run_spec(quant_cfg)
  return dataclasses.replace(spec, preset='w4a4', epochs=epochs).quant_spec()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--gen', required=True, help='synthetic.npz from mode generate (calibration set)')
  p.add_argument('--groups', default='A,D,B,C', help=f'comma-separated, from {list(GROUPS)}')
  p.add_argument('--bits', type=int, default=8)
  p.add_argument('--images', type=int, default=16, help='calibration images taken from --gen')
  p.add_argument('--epochs', type=int, default=2)
  p.add_argument('--eval_images', type=int, default=500)
  p.add_argument('--data_dir', default='../shared/data/cifar10')
  p.add_argument('--out', required=True)
  args = p.parse_args(argv)
  unknown = [g for g in args.groups.split(',') if g not in GROUPS]
  if unknown:
    p.error(f'unknown groups {unknown}; choose from {list(GROUPS)}')

  cfg = vim_t_cifar10.get_config()
  cfg.data.data_dir, cfg.data.eval_images = args.data_dir, args.eval_images
  model, params = sections.load_model(cfg.model)
  images = np.load(args.gen)['images'][:args.images]
  base = base_spec(cfg.quant, args.epochs)
  results = []
  for group in args.groups.split(','):
    spec = widened_spec(base, group, args.bits)
    start = time.perf_counter()
    qparams, _ = api.quantize(model, params, images, spec, method='ouromamba', log=lambda _: None)
    seconds = time.perf_counter() - start
    score = evaluate_stage.evaluate_data(model, qparams, cfg.data)
    results.append({'group': group, 'bits': args.bits, 'top1': score['top1'],
                    'top5': score['top5'], 'eval_images': score['images'],
                    'calibration_s': seconds})
    print(f'{group}{args.bits}: top-1 {100 * score["top1"]:.2f}%  top-5 '
          f'{100 * score["top5"]:.2f}%  (calibration {seconds:.0f} s)', flush=True)
    atomic.write_json(args.out, {'settings': vars(args), 'results': results})


if __name__ == '__main__':
  main()

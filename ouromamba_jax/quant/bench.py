"""Timing and sanity run of the quantization pipeline at real sizes (meant for the GPU).

  python -m ouromamba_jax.quant.bench --model vim_t --depth 4 --images 128 --preset w4a4 \
      --method ouromamba --epochs 10 --micro_batch 64 --out quant_bench.json
  python -m ouromamba_jax.quant.bench --smoke      # tiny CPU run of the same code

Random-init weights unless --checkpoint is given (a .pth / .safetensors of the model's family,
loaded with `ouromamba_jax.io`), Gaussian images unless --images_npz (an .npz with an NHWC float `images`
array). Reports seconds per block (first block includes compilation), reconstruction losses,
the logits' relative error and top-1 agreement against the float model, and whether the 'int'
mode reproduces the 'fake' logits bit for bit.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ouromamba_jax import quant
from ouromamba_jax import quantized_checkpoints
from ouromamba_jax.checkpoints import load_checkpoint
from ouromamba_jax.models import build_model


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='vim_t')
  p.add_argument('--depth', type=int, default=0, help='0 = the variant depth')
  p.add_argument('--img_size', type=int, default=0, help='0 = the variant size')
  p.add_argument('--checkpoint', default='')
  p.add_argument('--images', type=int, default=128)
  p.add_argument('--images_npz', default='')
  p.add_argument('--preset', default='w4a4')
  p.add_argument('--method', default='ouromamba')
  p.add_argument('--epochs', type=int, default=10)
  p.add_argument('--micro_batch', type=int, default=64)
  p.add_argument('--scale_space', default='log')
  p.add_argument('--lr', type=float, default=0.0, help='> 0: lr_weight = lr_act = this')
  p.add_argument('--workdir', default='')
  p.add_argument('--out', default='')
  p.add_argument('--smoke', action='store_true')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  overrides = {}
  if args.smoke:
    overrides = dict(img_size=32, patch_size=8, d_model=32, num_classes=10)
    args.depth, args.images, args.epochs, args.micro_batch = 2, 8, 1, 4
  if args.depth:
    overrides['depth'] = args.depth
  if args.img_size:
    overrides['img_size'] = args.img_size
  model = build_model(args.model, **overrides)
  shape = (args.images, model.img_size, model.img_size, model.in_chans)
  if args.images_npz:
    images = jnp.asarray(np.load(args.images_npz)['images'][:args.images], jnp.float32)
  else:
    images = jax.random.normal(jax.random.key(1), shape)
  if args.checkpoint:
    params = load_checkpoint(args.checkpoint, model)
  else:
    params = jax.jit(model.init)(jax.random.key(0), images[:1])['params']

  lrs = dict(lr_weight=args.lr, lr_act=args.lr) if args.lr > 0 else {}
  spec = quant.QuantRunSpec(preset=args.preset, epochs=args.epochs, micro_batch=args.micro_batch,
                            scale_space=args.scale_space, **lrs).quant_spec()
  snapshot = None
  if args.workdir:  # a killed run resumes at its next block
    snapshot = quantized_checkpoints.SnapshotFile(
        os.path.join(args.workdir, 'calibration_state.npz'))
  t0 = time.time()
  qparams, report = quant.quantize(model, params, images, spec, method=args.method,
                                   snapshot=snapshot, log=print)
  seconds = time.time() - t0

  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  fp, fake, as_int = [], [], []
  int_params = quant.set_mode(qparams, 'int')
  for i in range(0, args.images, args.micro_batch):
    x = images[i:i + args.micro_batch]
    fp.append(apply(params, x))
    fake.append(apply(qparams, x))
    as_int.append(apply(int_params, x))
  fp, fake, as_int = (jnp.concatenate(v) for v in (fp, fake, as_int))
  result = {
      'device': str(jax.devices()[0]), 'model': args.model, 'depth': model.depth,
      'images': args.images, 'preset': args.preset, 'method': args.method,
      'epochs': args.epochs, 'micro_batch': args.micro_batch, 'scale_space': args.scale_space,
      'seconds_total': seconds,
      'seconds_per_block': [b['seconds'] for b in report['blocks']],
      'loss_init': [b['loss_init'] for b in report['blocks']],
      'loss_final': [b['loss_final'] for b in report['blocks']],
      'kept': [b['kept'] for b in report['blocks']],
      'logits_rel_err': float(jnp.linalg.norm(fake - fp) / jnp.linalg.norm(fp)),
      'top1_agreement': float(jnp.mean(jnp.argmax(fake, -1) == jnp.argmax(fp, -1))),
      'int_equals_fake': bool(jnp.array_equal(fake, as_int)),
      'int_vs_fake_max_abs': float(jnp.max(jnp.abs(fake - as_int))),
      'unused_rules': report['unused_rules'],
  }
  print(json.dumps(result, indent=1))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  main()

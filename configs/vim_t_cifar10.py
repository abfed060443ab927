"""The bundled testbed: Vim-T width/depth on CIFAR-10 (32x32, patch 4 -> 65 tokens).

  python main.py --config=configs/vim_t_cifar10.py                       # demo pipeline
  python main.py --config=configs/vim_t_cifar10.py --config.mode=train \
      --config.model.checkpoint= --config.train.epochs=20                # retrain the testbed

The bundled weights (`ouromamba_jax/assets/vim_t_cifar10.{safetensors,md}`, the model card) come
from that training command (with --config.model.scan_implementation=triton, on one H100).
Without --config.model.checkpoint= mode `train` fine-tunes the bundled weights instead.

Gen, quantization and evaluation are demo-sized (`common.demo_sections`: 8 Gen images x 16
iterations, 2 calibration epochs, 500 test images); --config.pipeline.full=True switches the
pipeline to the paper size (see stages.pipeline.FULL), and for mode `generate` the paper size is
  --config.mode=generate --config.gen.num_images=128 --config.gen.iterations=1000
(add --config.gen.log_every=50 --config.gen.checkpoint_every=100 for quieter logs).
"""
from configs import common


def get_config():
  c = common.cifar10_testbed_config('vim_t_cifar10')
  c.model.checkpoint = 'bundled'
  return c

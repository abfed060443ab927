"""The VMamba testbed: the released v2 block recipe, 3 stages on CIFAR-10 32x32 (grids 8, 4, 2).

  python main.py --config=configs/vmamba_t_cifar10.py                       # demo pipeline
  python main.py --config=configs/vmamba_t_cifar10.py --config.mode=train \
      --config.model.checkpoint= --config.train.epochs=40                  # retrain the testbed

The bundled weights (`ouromamba_jax/assets/vmamba_t_cifar10.{safetensors,md}`, the model card)
come from that training command on one H200. The same demo-sized sections as
configs/vim_t_cifar10.py: Gen on SS2D (stage 0's 8x8 grid feeds the patch loss, `gen.ss2d`) and
block-wise reconstruction over every stage's blocks, as for Vim (DEVIATIONS.md);
--config.pipeline.full=True switches to the paper size.
"""
from configs import common


def get_config():
  c = common.cifar10_testbed_config('vmamba_t_cifar10')
  c.model.checkpoint = 'bundled'
  return c

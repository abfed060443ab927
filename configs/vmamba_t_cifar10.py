"""The VMamba testbed: the released v2 block recipe, 3 stages on CIFAR-10 32x32 (grids 8, 4, 2).

No trained checkpoint is bundled yet (issue 18 item 5), so the pipeline asks for one:

  python main.py --config=configs/vmamba_t_cifar10.py --config.model.checkpoint=/path/to.safetensors
  python main.py --config=configs/vmamba_t_cifar10.py --config.mode=train   # train it

The same demo-sized sections as configs/vim_t_cifar10.py. VMamba quantization has no block-wise
reconstruction yet (every site keeps its initial lp-searched scales; DEVIATIONS.md), and Gen is
not adapted to SS2D yet, so the pipeline's Gen-sourced runs are Vim-only for now.
"""
from configs import common


def get_config():
  c = common.cifar10_testbed_config('vmamba_t_cifar10')
  return c

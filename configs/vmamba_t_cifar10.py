"""The VMamba testbed: the released v2 block recipe, 3 stages on CIFAR-10 32x32 (grids 8, 4, 2).

No trained checkpoint is bundled yet (issue 18 item 5), so the pipeline asks for one:

  python main.py --config=configs/vmamba_t_cifar10.py --config.model.checkpoint=/path/to.safetensors
  python main.py --config=configs/vmamba_t_cifar10.py --config.mode=train   # train it

The same demo-sized sections as configs/vim_t_cifar10.py: Gen on SS2D (stage 0's 8x8 grid feeds
the patch loss, `gen.ss2d`) and block-wise reconstruction over every stage's blocks, as for Vim
(DEVIATIONS.md). A real training run on one GPU (the Vim testbed's recipe, 60 epochs, resumable:
rerun the same command after an interruption):

  python main.py --config=configs/vmamba_t_cifar10.py --config.mode=train \
      --workdir=workdir/vmamba_t_cifar10_train
"""
from configs import common


def get_config():
  c = common.cifar10_testbed_config('vmamba_t_cifar10')
  return c

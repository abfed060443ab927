"""The bundled testbed: Vim-T width/depth on CIFAR-10 (32x32, patch 4 -> 65 tokens).

  python main.py --config=configs/vim_t_cifar10.py                       # demo pipeline
  python main.py --config=configs/vim_t_cifar10.py --config.mode=train   # retrain the testbed
"""
from configs import common


def get_config():
  c = common.base_config()
  c.workdir = 'workdir/vim_t_cifar10'
  c.model = common.model_config('vim_t_cifar10')
  c.model.checkpoint = 'bundled'
  c.data = common.data_config('cifar10')
  c.data.data_dir = '../shared/data/cifar10'
  c.train = common.train_config()
  return c

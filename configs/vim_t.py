"""Vim-T at 224 (hustvl vim_tiny_patch16_224 midclstok) on ImageNet-format data.

Point model.checkpoint at vim_t_midclstok_76p1acc.pth and data.data_dir at an ImageNet
validation folder (or the 300-image sample in ../shared/data/imagenet_val_300).
"""
from configs import common


def get_config():
  c = common.base_config()
  c.workdir = 'workdir/vim_t'
  c.model = common.model_config('vim_t')
  c.data = common.data_config('imagenet')
  c.data.data_dir = '../shared/data/imagenet_val_300'
  c.data.eval_batch_size = 64
  c.gen = common.gen_config()
  return c

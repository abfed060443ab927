"""Vim-B at 224 (hustvl vim_base_patch16_224 midclstok, d_model 768) on ImageNet-format data.

Weights: download vim_b_midclstok_81p9acc.pth from https://huggingface.co/hustvl/Vim-base-midclstok
and pass --config.model.checkpoint=/path/to/vim_b_midclstok_81p9acc.pth (without it, mode
evaluate stops and says this). Data: data.data_dir is an ImageNet validation folder (class
subfolders, a labels file, or tfds imagenet2012 manual files); the default is the 300-image
sample in ../shared/data/imagenet_val_300.

  python main.py --config=configs/vim_b.py --config.mode=evaluate \
      --config.model.checkpoint=/path/to/vim_b_midclstok_81p9acc.pth
  python main.py --config=configs/vim_b.py --config.mode=convert \
      --config.convert.input=/path/to/vim_b_midclstok_81p9acc.pth   # -> WORKDIR/*.safetensors
"""
from configs import common


def get_config():
  return common.hustvl_imagenet_config('vim_b')

"""Vim-S at 224 (hustvl vim_small_patch16_224 midclstok, d_model 384) on ImageNet-format data.

Weights: download vim_s_midclstok_80p5acc.pth from https://huggingface.co/hustvl/Vim-small-midclstok
and pass --config.model.checkpoint=/path/to/vim_s_midclstok_80p5acc.pth (without it, mode
evaluate stops and says this). Data: data.data_dir is an ImageNet validation folder (class
subfolders, a labels file, or tfds imagenet2012 manual files); the default is the 300-image
sample in ../shared/data/imagenet_val_300.

  python main.py --config=configs/vim_s.py --config.mode=evaluate \
      --config.model.checkpoint=/path/to/vim_s_midclstok_80p5acc.pth
  python main.py --config=configs/vim_s.py --config.mode=convert \
      --config.convert.input=/path/to/vim_s_midclstok_80p5acc.pth   # -> WORKDIR/*.safetensors
"""
from configs import common


def get_config():
  return common.hustvl_imagenet_config('vim_s')

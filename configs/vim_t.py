"""Vim-T at 224 (hustvl vim_tiny_patch16_224 midclstok, d_model 192) on ImageNet-format data.

Weights: download vim_t_midclstok_76p1acc.pth from https://huggingface.co/hustvl/Vim-tiny-midclstok
and pass --config.model.checkpoint=/path/to/vim_t_midclstok_76p1acc.pth (without it, mode
evaluate stops and says this). Data: data.data_dir is an ImageNet validation folder (class
subfolders, a labels file, or tfds imagenet2012 manual files); the default is the 300-image
sample in ../shared/data/imagenet_val_300.

  python main.py --config=configs/vim_t.py --config.mode=evaluate \
      --config.model.checkpoint=/path/to/vim_t_midclstok_76p1acc.pth
  python main.py --config=configs/vim_t.py --config.mode=convert \
      --config.convert.input=/path/to/vim_t_midclstok_76p1acc.pth   # -> WORKDIR/*.safetensors
"""
from configs import common


def get_config():
  return common.hustvl_imagenet_config('vim_t')

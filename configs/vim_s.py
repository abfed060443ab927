"""Vim-S at 224 (hustvl vim_small_patch16_224 midclstok, d_model 384): data-free quantization.

Weights: download vim_s_midclstok_80p5acc.pth from https://huggingface.co/hustvl/Vim-small-midclstok
and pass its path; the pipeline then needs no data:

  python main.py --config=configs/vim_s.py --config.model.checkpoint=/path/to/vim_s_midclstok_80p5acc.pth

Gen -> quantize (W4A4 official site set, W4A4 with A on a log-domain grid) -> quantized
checkpoints -> reports, demo-sized (--config.pipeline.full=True: paper size). Evaluation reads
ImageNet from --config.data.data_dir (class folders, a labels file, an archive, or
ILSVRC2012_img_val.tar for tfds); without it, the 300-image sample in
../shared/data/imagenet_val_300 as a smoke check, else it is skipped. Other modes:

  python main.py --config=configs/vim_s.py --config.mode=evaluate \
      --config.model.checkpoint=/path/to/vim_s_midclstok_80p5acc.pth
  python main.py --config=configs/vim_s.py --config.mode=convert \
      --config.convert.input=/path/to/vim_s_midclstok_80p5acc.pth   # -> WORKDIR/*.safetensors
"""
from configs import common


def get_config():
  return common.hustvl_imagenet_config('vim_s')

"""The MambaVision testbed: T's depths and heads at width 32 on CIFAR-10 32x32 (stride-1 stem:
conv stages on 32x32 and 16x16 grids, hybrid stages on one 8x8 and one 4x4 window).

  python main.py --config=configs/mambavision_t_cifar10.py                  # demo pipeline
  python main.py --config=configs/mambavision_t_cifar10.py --config.mode=train \
      --config.model.checkpoint= --config.train.epochs=40                  # retrain the testbed

The bundled weights (`ouromamba_jax/assets/mambavision_t_cifar10.{safetensors,md}`, the model
card) come from that training command on one H200. Training uses the Vim/VMamba testbed recipe
(`train.recipe`; its BatchNorms train on batch statistics and keep torch's running statistics).
The same demo-sized sections as configs/vim_t_cifar10.py. MambaVision quantization has no
block-wise reconstruction (every site keeps its initial lp-searched scales; DEVIATIONS.md). Gen
runs on its stage-3 mixers (`gen.windows`: stage 4's 4x4 window is smaller than the 5x5
neighbourhood).
"""
from configs import common


def get_config():
  c = common.cifar10_testbed_config('mambavision_t_cifar10')
  c.model.checkpoint = 'bundled'
  return c

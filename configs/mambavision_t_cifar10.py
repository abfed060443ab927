"""The MambaVision testbed: T's depths and heads at width 32 on CIFAR-10 32x32 (stride-1 stem:
conv stages on 32x32 and 16x16 grids, hybrid stages on one 8x8 and one 4x4 window).

No trained checkpoint is bundled yet (issue 21 item 5), so the pipeline asks for one:

  python main.py --config=configs/mambavision_t_cifar10.py --config.mode=train   # train it
  python main.py --config=configs/mambavision_t_cifar10.py \
      --config.model.checkpoint=workdir/mambavision_t_cifar10/model.safetensors

Training uses the Vim/VMamba testbed recipe (`train.recipe`; its BatchNorms train on batch
statistics and keep torch's running statistics). The same demo-sized sections as
configs/vim_t_cifar10.py. MambaVision quantization has no block-wise reconstruction (every site
keeps its initial lp-searched scales; DEVIATIONS.md). Gen runs on its stage-3 mixers
(`gen.windows`: stage 4's 4x4 window is smaller than the 5x5 neighbourhood).
"""
from configs import common


def get_config():
  return common.cifar10_testbed_config('mambavision_t_cifar10')

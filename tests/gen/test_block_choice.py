"""gen.block_choice: gen.loss_blocks checked against the blocks that fit, or all that fit."""
import pytest

from ouromamba_jax.gen import block_choice

MESSAGES = dict(out_of_range=lambda bad: f'out of range {bad}',
                too_small=lambda small: f'too small {small}', none_fits=lambda: 'none fits')


def test_chosen_blocks_are_checked_and_kept_in_order():
  fits = lambda b: b < 2
  assert block_choice.choose_loss_blocks((1, 0), 4, fits, **MESSAGES) == (1, 0)
  with pytest.raises(ValueError, match=r'^out of range \[4, -1\]$'):
    block_choice.choose_loss_blocks((0, 4, -1, 3), 4, fits, **MESSAGES)
  with pytest.raises(ValueError, match=r'^too small \[2, 3\]$'):
    block_choice.choose_loss_blocks((0, 2, 3), 4, fits, **MESSAGES)


def test_nothing_chosen_means_every_block_that_fits():
  assert block_choice.choose_loss_blocks((), 4, lambda b: b % 2 == 1, **MESSAGES) == (1, 3)
  with pytest.raises(ValueError, match='^none fits$'):
    block_choice.choose_loss_blocks((), 4, lambda b: False, **MESSAGES)

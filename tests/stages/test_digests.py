"""stages.digests: the keys of finished work depend on the settings, not on their order, and
stay what earlier runs recorded (a changed format would redo every cached run)."""
from ouromamba_jax.stages import digests


def test_equal_settings_give_equal_keys():
  key = digests.settings_digest({'a': 1, 'b': [1, 2]})
  assert key == digests.settings_digest({'b': [1, 2], 'a': 1}) == 'e6f20bdc3757e5e7'
  assert key != digests.settings_digest({'a': 2, 'b': [1, 2]})
  assert digests.settings_digest({'p': object}) == digests.settings_digest({'p': str(object)})

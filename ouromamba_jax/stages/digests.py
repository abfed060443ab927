"""Short digests of settings: the keys under which stages find finished work again (a cached
evaluation, a shared Gen set, a study's finished cell), equal exactly when the settings are."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def settings_digest(settings: Any) -> str:
  """16 hex digits of SHA-256 over `settings` as JSON (keys sorted; other values by str)."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]

"""Development and embedded default (`make run`, tests): DEBUG on unless the environment says otherwise."""

import os

os.environ.setdefault("DEBUG", "1")

from wallet.settings.base import *  # noqa: F403

"""One frozen, validated Config, built once at start-up from the environment and YAML.

``model`` holds the frozen dataclasses, each checking its own values;
``loading`` reads the environment and the YAML file into them
(``Config.from_env``). Anything wrong raises ConfigError with one line that
names the key. Import from here: ``from service.config import Config``.
"""

from service.config import model
from service.config.loading import REPO_MIGRATIONS
from service.config.model import *  # noqa: F403  (the names in model.__all__)

__all__ = ["REPO_MIGRATIONS"]
__all__ += model.__all__

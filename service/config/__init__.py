"""One frozen, validated Config, built once at start-up from the environment and YAML.

``model`` holds the frozen dataclasses, each checking its own values;
``loading`` reads the environment and the YAML file into them
(``Config.from_env``). Anything wrong raises ConfigError with one line that
names the key. Import from here: ``from service.config import Config``.
"""

from service.config.loading import REPO_MIGRATIONS
from service.config.model import (
    SYNCHRONOUS_MODES,
    TEMP_STORES,
    CacheConfig,
    Config,
    ConfigError,
    DatabaseConfig,
    GroupConfig,
    Limits,
    RouteBound,
    RouteConfig,
    SqliteSettings,
    TlsConfig,
    TokenConfig,
)

__all__ = [
    "REPO_MIGRATIONS",
    "SYNCHRONOUS_MODES",
    "TEMP_STORES",
    "CacheConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "GroupConfig",
    "Limits",
    "RouteBound",
    "RouteConfig",
    "SqliteSettings",
    "TlsConfig",
    "TokenConfig",
]

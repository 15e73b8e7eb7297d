"""The built-in checkpoint formats: importing this module registers every importer and exporter."""

from lamm.zoo import openflamingo  # noqa: F401  (registers "openflamingo")
from lamm.zoo import mmgpt  # noqa: F401  (registers "mmgpt")

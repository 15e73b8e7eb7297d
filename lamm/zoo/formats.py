"""The built-in checkpoint formats: importing this module registers every importer and exporter."""
from lamm.zoo import blip2  # noqa: F401  (registration)

"""The built-in checkpoint formats: importing this module registers every importer and exporter."""
from lamm.zoo import lamm_delta  # noqa: F401  (registration)

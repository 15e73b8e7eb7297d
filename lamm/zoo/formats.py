"""The built-in checkpoint formats: importing this module registers every importer and exporter."""
from lamm.zoo import idefics  # noqa: F401  (hf_idefics)

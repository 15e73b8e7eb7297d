"""The built-in checkpoint formats: importing this module registers every importer and exporter."""

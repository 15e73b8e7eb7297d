"""Hydra discovers plug-ins by scanning the `hydra_plugins` namespace; lamm's lives here."""

"""Configs that lamm's Hydra search-path plug-in adds beside lamm's own (`pkg://lamm_plugin_encoder.conf`)."""

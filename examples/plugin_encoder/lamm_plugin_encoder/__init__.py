"""An example lamm plug-in: an MLP-Mixer image encoder registered as `my_encoder`.

Kept free of imports: Hydra imports `lamm_plugin_encoder.conf` to read the YAML, and that should
not pay for torch. lamm imports `lamm_plugin_encoder.encoder` (the entry point) on first lookup.
"""

"""Hydra configs, shipped inside the package so installed CLIs find them."""

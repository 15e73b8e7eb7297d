"""Training: Lightning module and data module, optimisation, checkpoints, run folders, export."""

"""Instruction-data formats, processors, collate and the built-in offline data generators."""

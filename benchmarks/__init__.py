"""ChEF-style evaluation: scenarios, instructions, inferencers, metrics (filled by the benchmark issue)."""

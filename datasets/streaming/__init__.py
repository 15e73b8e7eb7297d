"""Streamed training data with exact resume: shard readers that know their position, the split of
shards across ranks x DataLoader workers, seeded shard-order and block shuffles, weighted mixtures of
streams, and the endless per-reader loop the training DataLoader iterates.

A stream (`ResumableStream`) yields `StreamItem`s: a processed sample with the reader's position
after it, a plain dict that a checkpoint stores and `stream(..., start=position)` continues from.
"""

"""Activations at scale: windows, the batch stream, the shard store, a token's occurrences.

The data flow::

    documents -> token stream (a boundary token before each document)   windows.py
              -> context windows of ``context_length`` tokens (packed, or one document each)
              -> batches of ``batch_size`` windows -> run_with_cache(stop_at_layer=last hook + 1)
              -> rows: one per selected token position, (n_rows, d) per hook   stream.py
              -> shards on disk that survive interruption                  store.py

``iter_activations`` yields those rows batch by batch (the SAE trainer consumes it
directly); ``extract`` writes them as safetensors shards.
"""

from .store import SimulatedInterruption, extract, iter_shards, load_extraction, read_metadata
from .stream import ActivationBatch, check_hooks, iter_activations, stop_layer_for
from .tokens import TokenActivations, token_activations
from .windows import (
    BOUNDARY,
    LAST,
    NORMAL,
    PAD,
    Windows,
    boundary_token,
    iter_windows,
    resolve_token,
)

__all__ = [
    "BOUNDARY",
    "LAST",
    "NORMAL",
    "PAD",
    "SimulatedInterruption",
    "ActivationBatch",
    "TokenActivations",
    "Windows",
    "boundary_token",
    "check_hooks",
    "extract",
    "iter_activations",
    "iter_shards",
    "iter_windows",
    "load_extraction",
    "read_metadata",
    "resolve_token",
    "stop_layer_for",
    "token_activations",
]

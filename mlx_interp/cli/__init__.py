"""The ``mlx-interp`` command line: ``main`` dispatches; each command family owns its parser
(``activations``: extract, tokens, analyze; ``sae``: train-sae, eval-sae; ``features``;
``demo``: the whole pipeline)."""

from .main import main

__all__ = ["main"]

"""Looking at activations: measures (dataclasses), their plots, and interventions.

``measures`` computes (residual norms, top neurons, token and word-group similarity,
positional effects, the logit lens); ``plots`` draws a measure and writes its numbers beside
the figure; ``interventions`` ablates, patches and steers; ``attribution`` estimates
patching for every component at once (AtP); ``run`` does all of them for
``mlx-interp analyze``.
"""

from .attribution import AttributionResult, attribution_patching
from .measures import (
    DEFAULT_GROUPS,
    DEFAULT_TEMPLATES,
    MASSIVE_FACTOR,
    LogitLens,
    NeuronActivations,
    PositionEmbeddings,
    PositionNorms,
    SameTokenPositions,
    SemanticSimilarity,
    TokenSimilarity,
    cosine_matrix,
    layer_labels,
    logit_lens,
    massive_mask,
    position_embeddings,
    position_norms,
    resid_names,
    residual_norms,
    same_token_positions,
    semantic_similarity,
    token_similarity,
    top_neurons,
)
from .run import run_all

__all__ = [
    "AttributionResult",
    "DEFAULT_GROUPS",
    "DEFAULT_TEMPLATES",
    "MASSIVE_FACTOR",
    "LogitLens",
    "NeuronActivations",
    "PositionEmbeddings",
    "PositionNorms",
    "SameTokenPositions",
    "SemanticSimilarity",
    "TokenSimilarity",
    "attribution_patching",
    "cosine_matrix",
    "layer_labels",
    "logit_lens",
    "massive_mask",
    "position_embeddings",
    "position_norms",
    "resid_names",
    "residual_norms",
    "run_all",
    "same_token_positions",
    "semantic_similarity",
    "token_similarity",
    "top_neurons",
]

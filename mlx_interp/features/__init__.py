"""Feature analysis of SAEs: statistics, monosemanticity metrics, dashboards, interventions.

The pass over the data is ``collect``, its result on disk ``store``, the questions asked
of a store (or of an SAE on one text) ``queries``.
"""

from .collect import compute_feature_stats
from .queries import features_for_text, features_for_token
from .stats import StatsConfig, UnitStats
from .store import FeatureStore, load_feature_store

__all__ = [
    "FeatureStore",
    "StatsConfig",
    "UnitStats",
    "compute_feature_stats",
    "features_for_text",
    "features_for_token",
    "load_feature_store",
]

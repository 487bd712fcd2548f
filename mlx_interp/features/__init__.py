"""Feature analysis of SAEs: statistics, monosemanticity metrics, dashboards, interventions."""

from .stats import StatsConfig, UnitStats
from .store import (
    FeatureStore,
    compute_feature_stats,
    features_for_text,
    features_for_token,
    load_feature_store,
)

__all__ = [
    "FeatureStore",
    "StatsConfig",
    "UnitStats",
    "compute_feature_stats",
    "features_for_text",
    "features_for_token",
    "load_feature_store",
]

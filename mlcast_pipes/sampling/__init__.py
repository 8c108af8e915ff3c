"""Samplers chosen by name, and seeded epoch draws from their pools.

Importing the package registers the built-in samplers (``binnorm``, ``ldcast``, ``importance``,
``uniform``, ``community``); their index files live in :mod:`mlcast_pipes.indexes.sampling`.
"""

from mlcast_pipes.indexes.community import load_community_csv, load_community_stats
from mlcast_pipes.sampling import binned, community, importance
from mlcast_pipes.sampling.base import (
    DOMINANT_SHARE,
    LDCAST_BIN_EDGES,
    MIN_ACCEPTANCE,
    MIN_POOL_TILES,
    POOL_COLUMNS,
    SAMPLES_COLUMNS,
    STAT_AGGREGATIONS,
    SamplingWarning,
)
from mlcast_pipes.sampling.epoch import assign_time_offsets, draw_epoch, per_tile_uniform
from mlcast_pipes.sampling.registry import (
    available_samplers,
    epoch_shares,
    get_sampler,
    register_sampler,
    resolve_sampler_params,
    run_sampler,
    sampler_name,
)

del binned, community, importance

__all__ = [
    "DOMINANT_SHARE",
    "LDCAST_BIN_EDGES",
    "MIN_ACCEPTANCE",
    "MIN_POOL_TILES",
    "POOL_COLUMNS",
    "SAMPLES_COLUMNS",
    "STAT_AGGREGATIONS",
    "SamplingWarning",
    "assign_time_offsets",
    "available_samplers",
    "draw_epoch",
    "epoch_shares",
    "get_sampler",
    "load_community_csv",
    "load_community_stats",
    "per_tile_uniform",
    "register_sampler",
    "resolve_sampler_params",
    "run_sampler",
    "sampler_name",
]

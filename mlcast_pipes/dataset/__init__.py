"""Open MLCast radar archives as (time, y, x) DataArrays, check them against the spec, name them.

Submodules: opening (sources), stores, select (variable and coordinates), spec (checks), ids.
"""

from mlcast_pipes.dataset.ids import (
    CHUNK_FINGERPRINT_ENV,
    dataset_id,
    fingerprint,
    metadata_stamp,
    missing_times,
    nominal_time_step,
)
from mlcast_pipes.dataset.opening import (
    SourceSpec,
    open_mlcast,
    open_source,
    source_spec,
)
from mlcast_pipes.dataset.select import STANDARD_NAMES, select_variable
from mlcast_pipes.dataset.spec import (
    KNOWN_UNITS,
    SPEC_GLOBAL_ATTRS,
    UNITS_BY_STANDARD_NAME,
    MLCastSpecWarning,
    validate,
)
from mlcast_pipes.dataset.stores import with_timeouts

__all__ = [
    "CHUNK_FINGERPRINT_ENV",
    "KNOWN_UNITS",
    "SPEC_GLOBAL_ATTRS",
    "STANDARD_NAMES",
    "UNITS_BY_STANDARD_NAME",
    "MLCastSpecWarning",
    "SourceSpec",
    "dataset_id",
    "fingerprint",
    "metadata_stamp",
    "missing_times",
    "nominal_time_step",
    "open_mlcast",
    "open_source",
    "select_variable",
    "source_spec",
    "validate",
    "with_timeouts",
]

"""Unit conversions, invertible normalisation transforms and the Normalizer.

Turns native radar values (rain rate, dBZ or rain amount; NaN = no data) into model inputs and back.
"""

from mlcast_pipes.transforms.normalize import (
    DEFAULT_CLIP_MAX,
    MeanStdAccumulator,
    Normalizer,
    denormalize,
    fit_mean_std,
    make_normalizer,
)
from mlcast_pipes.transforms.rates import (
    DEFAULT_DBZ_FLOOR,
    MARSHALL_PALMER_A,
    MARSHALL_PALMER_B,
    dbz_to_rate,
    from_rain_rate_fn,
    rate_to_dbz,
    to_rain_rate_fn,
)
from mlcast_pipes.transforms.registry import (
    FittedTransform,
    IdentityTransform,
    LDCastTransform,
    Log1pTransform,
    MLCastDBZTransform,
    ScaleTransform,
    Transform,
    available_transforms,
    get_transform,
    register_transform,
)
from mlcast_pipes.transforms.units import (
    Kind,
    canonical_units,
    known_units,
    units_kind,
    variable_kind,
)

__all__ = [
    "DEFAULT_CLIP_MAX",
    "DEFAULT_DBZ_FLOOR",
    "MARSHALL_PALMER_A",
    "MARSHALL_PALMER_B",
    "FittedTransform",
    "IdentityTransform",
    "Kind",
    "LDCastTransform",
    "Log1pTransform",
    "MLCastDBZTransform",
    "MeanStdAccumulator",
    "Normalizer",
    "ScaleTransform",
    "Transform",
    "available_transforms",
    "canonical_units",
    "dbz_to_rate",
    "denormalize",
    "fit_mean_std",
    "from_rain_rate_fn",
    "get_transform",
    "known_units",
    "make_normalizer",
    "rate_to_dbz",
    "register_transform",
    "to_rain_rate_fn",
    "units_kind",
    "variable_kind",
]

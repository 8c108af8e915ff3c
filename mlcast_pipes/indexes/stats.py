"""Statistics files: the ``variable,mean,std`` CSV written next to a sampling index.

Read back by the ``fitted`` transform and by :mod:`mlcast_pipes.indexes.sampling_stats`.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

from mlcast_pipes.errors import IndexFileError, ParameterError
from mlcast_pipes.indexes.format import atomic_write
from mlcast_pipes.transforms.registry import _finite

__all__ = [
    "STATS_COLUMNS",
    "read_stats_csv",
    "stats_filename",
    "write_stats_csv",
]


STATS_COLUMNS = ("variable", "mean", "std")
"""Header of a ``{sampling_id}.stats.csv`` file."""


def stats_filename(sampling_id: str) -> str:
    """File name of the statistics of a sampling: ``{sampling_id}.stats.csv``.

    Examples
    --------
    >>> stats_filename("demo.128x128.12.12.binnorm.0123456789ab")
    'demo.128x128.12.12.binnorm.0123456789ab.stats.csv'

    """
    return f"{sampling_id}.stats.csv"


def write_stats_csv(path: str | os.PathLike[str], stats: Mapping[str, tuple[float, float]]) -> Path:
    """Write ``{variable: (mean, std)}`` atomically as ``variable,mean,std``, full precision.

    Raises ParameterError for an empty mapping, non-finite values or a negative std.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / stats_filename("demo.binnorm")
    >>> print(write_stats_csv(path, {"rainfall_rate": (0.25, 1.5)}).read_text(), end="")
    variable,mean,std
    rainfall_rate,0.25,1.5

    """
    target = Path(path)
    if not stats:
        raise ParameterError("no statistics to write; pass {variable: (mean, std)}")
    rows = []
    for variable, pair in stats.items():
        try:
            mean, std = pair
        except (TypeError, ValueError) as exc:
            raise ParameterError(
                f"statistics of {variable!r} must be a (mean, std) pair, got {pair!r}"
            ) from exc
        m = _finite(mean, f"mean of {variable!r}")
        s = _finite(std, f"std of {variable!r}")
        if s < 0:
            raise ParameterError(f"std of {variable!r} must not be negative, got {std!r}")
        rows.append((str(variable), repr(m), repr(s)))

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as fh:  # removes temp files of killed writes, too
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(STATS_COLUMNS)
        writer.writerows(rows)
    return target


def read_stats_csv(path: str | os.PathLike[str]) -> dict[str, tuple[float, float]]:
    """Read a file of :func:`write_stats_csv`; IndexFileError for a missing or malformed one.

    Examples
    --------
    >>> import tempfile
    >>> path = write_stats_csv(Path(tempfile.mkdtemp()) / "s.stats.csv", {"rr": (0.25, 1.5)})
    >>> read_stats_csv(path)
    {'rr': (0.25, 1.5)}

    """
    source = Path(path)
    fix = "recompute the statistics (rerun the prepare step) or fix the file"
    try:
        with source.open(newline="", encoding="utf-8") as fh:
            lines = list(csv.reader(fh))
    except OSError as exc:
        raise IndexFileError(f"cannot read statistics file {source}: {exc}; {fix}") from exc
    if not lines or tuple(c.strip() for c in lines[0]) != STATS_COLUMNS:
        raise IndexFileError(
            f"{source} is not a statistics file: the header must be "
            f"{','.join(STATS_COLUMNS)}, got {','.join(lines[0]) if lines else 'nothing'}; {fix}"
        )
    out: dict[str, tuple[float, float]] = {}
    for number, row in enumerate(lines[1:], start=2):
        if not row:
            continue
        try:
            variable, mean_s, std_s = row
            mean, std = float(mean_s), float(std_s)
        except ValueError as exc:
            raise IndexFileError(f"{source} line {number} is malformed: {row!r}; {fix}") from exc
        if not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
            raise IndexFileError(
                f"{source} line {number}: mean/std must be finite and std >= 0, got {row!r}; {fix}"
            )
        if variable in out:
            raise IndexFileError(f"{source} lists {variable!r} twice; {fix}")
        out[variable] = (mean, std)
    if not out:
        raise IndexFileError(f"{source} holds no statistics; {fix}")
    return out

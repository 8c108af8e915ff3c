"""Exception types raised by mlcast-pipes.

Every error names the problem and the fix; all derive from :class:`MLCastPipesError`.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "DatasetError",
    "IndexFileError",
    "MLCastPipesError",
    "ParameterError",
    "PipelineOrderError",
    "ReadError",
    "StaleIndexError",
]


class MLCastPipesError(Exception):
    """Base class of every error raised on purpose by mlcast-pipes; catch it to handle them all.

    Examples
    --------
    >>> from mlcast_pipes.epochs import Shard
    >>> try:
    ...     Shard(count=2, index=5)
    ... except MLCastPipesError as exc:
    ...     print(type(exc).__name__, "-", exc)
    ParameterError - invalid shard 5 of 2: the index must be in [0, count)

    """


class CatalogError(MLCastPipesError, KeyError):
    """A catalog file is malformed, or a dataset id is not in the catalog.

    Examples
    --------
    >>> issubclass(CatalogError, KeyError)
    True

    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(MLCastPipesError, ValueError):
    """A dataset cannot be opened or does not follow the MLCast structure the pipeline needs.

    Examples
    --------
    >>> issubclass(DatasetError, ValueError)
    True

    """


class ParameterError(MLCastPipesError, ValueError):
    """A parameter value is out of range or inconsistent with the dataset.

    Examples
    --------
    >>> issubclass(ParameterError, ValueError)
    True

    """


class IndexFileError(MLCastPipesError, ValueError):
    """An index file (CSV or metadata sidecar) is missing, truncated, edited or unreadable.

    Examples
    --------
    >>> issubclass(IndexFileError, ValueError)
    True

    """


class StaleIndexError(IndexFileError):
    """An index file was made for other parameters or another version of the dataset.

    Examples
    --------
    >>> issubclass(StaleIndexError, IndexFileError)
    True

    """


class PipelineOrderError(MLCastPipesError, TypeError):
    """Pipeline steps are chained in an order that cannot work (a step lacks what it needs).

    Examples
    --------
    >>> issubclass(PipelineOrderError, TypeError)
    True

    """


class ReadError(MLCastPipesError, OSError):
    """Pixels of a tile could not be read from the source archive.

    Examples
    --------
    >>> issubclass(ReadError, OSError)
    True

    """

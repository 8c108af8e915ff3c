"""Exception types raised by mlcast-pipes.

Every error names the problem and the fix; all derive from :class:`MLCastPipesError`.
"""

from __future__ import annotations


class MLCastPipesError(Exception):
    """Base class of every error raised on purpose by mlcast-pipes."""


class CatalogError(MLCastPipesError, KeyError):
    """A catalog file is malformed, or a dataset id is not in the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(MLCastPipesError, ValueError):
    """A dataset cannot be opened or does not follow the MLCast structure the pipeline needs."""


class ParameterError(MLCastPipesError, ValueError):
    """A parameter value is out of range or inconsistent with the dataset."""


class IndexFileError(MLCastPipesError, ValueError):
    """An index file (CSV or metadata sidecar) is missing, truncated, edited or unreadable."""


class StaleIndexError(IndexFileError):
    """An index file was made for other parameters or another version of the dataset."""


class PipelineOrderError(MLCastPipesError, TypeError):
    """Pipeline steps are chained in an order that cannot work (a step lacks what it needs)."""


class ReadError(MLCastPipesError, OSError):
    """Pixels of a tile could not be read from the source archive."""

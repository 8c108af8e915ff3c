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
    """Base class of every error raised on purpose by mlcast-pipes.

    Examples
    --------
    Catch it to handle any mlcast-pipes error at once:

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
    An unknown id; the message suggests close matches (it is also a ``KeyError``):

    >>> from mlcast_pipes.catalog import resolve_entry
    >>> try:
    ...     resolve_entry("dmi_10_minute")
    ... except CatalogError as exc:
    ...     print(isinstance(exc, KeyError), exc)
    True unknown dataset id 'dmi_10_minute' in the bundled catalog. Did you mean
    'dmi_10_minutes', ...

    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(MLCastPipesError, ValueError):
    """A dataset cannot be opened or does not follow the MLCast structure the pipeline needs.

    Examples
    --------
    >>> from mlcast_pipes.reader import FrameReader
    >>> try:
    ...     FrameReader("missing.zarr", "rainfall_rate").shape
    ... except DatasetError as exc:
    ...     print(exc)
    Could not open a zarr group at 'missing.zarr' (FileNotFoundError: ...). Check that the path
    or URL points at the root of a zarr store ...

    """


class ParameterError(MLCastPipesError, ValueError):
    """A parameter value is out of range or inconsistent with the dataset.

    Examples
    --------
    It is also a ``ValueError``:

    >>> from mlcast_pipes.epochs import Shard
    >>> try:
    ...     Shard(count=0)
    ... except ValueError as exc:
    ...     print(type(exc).__name__, "-", exc)
    ParameterError - invalid shard 0 of 0: the index must be in [0, count)

    """


class IndexFileError(MLCastPipesError, ValueError):
    """An index file (CSV or metadata sidecar) is missing, truncated, edited or unreadable.

    Examples
    --------
    >>> from mlcast_pipes.indexes.format import read_sidecar
    >>> try:
    ...     read_sidecar("idx/nothing.meta.json")
    ... except IndexFileError as exc:
    ...     print(exc)
    metadata sidecar 'idx/nothing.meta.json' not found; fix: rerun prepare to rebuild the index

    """


class StaleIndexError(IndexFileError):
    """An index file was made for other parameters or another version of the dataset.

    Examples
    --------
    An index written by another format version of mlcast-pipes (a stale index is also an
    :class:`IndexFileError`):

    >>> from pathlib import Path
    >>> from mlcast_pipes.indexes.format import sidecar_path
    >>> from mlcast_pipes.indexes.index_csv import validate_index
    >>> csv = Path("old.samples.csv")
    >>> csv.touch()
    >>> _ = sidecar_path(csv).write_text('{"format_version": 0}')
    >>> try:
    ...     validate_index(csv)
    ... except IndexFileError as exc:
    ...     print(type(exc).__name__, "-", exc)
    StaleIndexError - index '...old.samples.csv' has format version 0, this mlcast-pipes reads
    version ...; fix: rerun `mlcast-pipes prepare` for this dataset, or pass recompute=True ...

    """


class PipelineOrderError(MLCastPipesError, TypeError):
    """Pipeline steps are chained in an order that cannot work (a step lacks what it needs).

    Examples
    --------
    A sampler chained straight after the opener, without ``.tile()`` (also a ``TypeError``):

    >>> import mlcast_pipes
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> try:
    ...     IterableWrapper(["demo"]).open_mlcast().uniform_sample()
    ... except TypeError as exc:
    ...     print(type(exc).__name__, "-", exc)
    PipelineOrderError - the 'uniform' sampler needs tiles: chain it after .tile()
    (TilingSampler), got MLCastOpener before it

    """


class ReadError(MLCastPipesError, OSError):
    """Pixels of a tile could not be read from the source archive.

    Examples
    --------
    A training copy that was deleted (it is also an ``OSError``):

    >>> from mlcast_pipes.indexes.training_copy import TrainingCopy
    >>> try:
    ...     TrainingCopy("deleted.zarr").read(0)
    ... except OSError as exc:
    ...     print(type(exc).__name__, "-", exc)
    ReadError - cannot read sample 0 from the training copy deleted.zarr: ...; delete the copy
    and rerun `mlcast-pipes prepare ... --materialize`

    """

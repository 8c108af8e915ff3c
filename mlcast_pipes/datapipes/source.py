"""Source datapipes: ``.open_mlcast()``, ``MLCastCatalogDataset`` and ``OpenXarrayDataset``.

They turn catalog ids, paths or URLs into lazy (time, y, x) DataArrays, opened inside ``__iter__``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import xarray as xr
from torch.utils.data import IterDataPipe, functional_datapipe

from mlcast_pipes.datapipes.steps import Stage, Step
from mlcast_pipes.dataset import metadata_stamp, open_mlcast
from mlcast_pipes.errors import ParameterError

__all__ = [
    "MLCastCatalogDataset",
    "MLCastOpener",
    "OpenXarrayDataset",
    "Source",
]


CatalogArg = str | os.PathLike[str] | None
#: What a source datapipe opens: a catalog id, a path, a URL or an in-memory xarray object.
Source = str | os.PathLike[str] | xr.Dataset | xr.DataArray


@functional_datapipe("open_mlcast")
class MLCastOpener(Step, IterDataPipe[xr.DataArray]):
    """Open each catalog id, path, URL or xarray object upstream as an MLCast DataArray.

    Each worker opens its own handle lazily and keeps it across epochs; a local store is reopened
    only when its metadata changed. ``var_name`` defaults to the CF standard_name pick;
    ``strict`` raises instead of warning on deviations from the MLCast structure. ``dataset_id``
    names the indexes of the one source instead of the archive's identifier (for a subset that
    kept it).

    Examples
    --------
    >>> from torchdata.datapipes.iter import IterableWrapper
    >>> import mlcast_pipes
    >>> next(iter(IterableWrapper(["demo"]).open_mlcast())).dims
    ('time', 'y', 'x')

    """

    provides: ClassVar[Stage] = "dataset"

    def __init__(
        self,
        source_datapipe: IterDataPipe[Any],
        var_name: str | None = None,
        catalog: CatalogArg = None,
        storage_options: Mapping[str, Any] | None = None,
        strict: bool = False,
        dataset_id: str | None = None,
    ) -> None:
        self.source_datapipe = source_datapipe
        self.var_name = var_name
        self.dataset_id = dataset_id
        self.catalog = catalog
        self.storage_options = dict(storage_options or {})
        self.strict = strict
        self._opened: dict[str, tuple[Any, xr.DataArray]] = {}
        self._pid = os.getpid()

    def open(self, source: Source) -> xr.DataArray:
        """Open one source with this datapipe's options (again only if it changed)."""
        if self._pid != os.getpid():  # a forked worker opens its own handles
            self._opened, self._pid = {}, os.getpid()
        if isinstance(source, xr.Dataset | xr.DataArray):
            # an in-memory object: opened once per process while it is the same object
            key = f"<in-memory object {id(source)}>"
            known = self._opened.get(key)
            if known is not None and known[0] is source:
                return known[1]
            da = open_mlcast(source, self.var_name, strict=self.strict, dataset_id=self._id(key))
            self._opened[key] = (source, da)
            return da
        key = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
        known = self._opened.get(key)
        if known is not None and known[0] == metadata_stamp(known[1]):
            return known[1]
        da = open_mlcast(
            source,
            self.var_name,
            catalog=self.catalog,
            storage_options=self.storage_options or None,
            strict=self.strict,
            dataset_id=self._id(key),
        )
        self._opened[key] = (metadata_stamp(da), da)
        return da

    def _id(self, key: str) -> str | None:
        """The dataset id asked for ``key``; one id cannot name two sources."""
        if self.dataset_id is not None and any(k != key for k in self._opened):
            raise ParameterError(
                f"dataset_id={self.dataset_id!r} names one source, but this .open_mlcast() "
                "opens several; fix: one .open_mlcast(dataset_id=...) per source, or no dataset_id"
            )
        return self.dataset_id

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the opened handles (each process opens its own)."""
        state = dict(self.__dict__)
        state["_opened"] = {}
        if IterDataPipe.getstate_hook is not None:
            hooked: dict[str, Any] = IterDataPipe.getstate_hook(state)
            return hooked
        return state

    def __iter__(self) -> Iterator[xr.DataArray]:
        for source in self.source_datapipe:
            yield self.open(source)


class _SingleSource(Step, IterDataPipe[xr.DataArray]):
    """A source datapipe that opens exactly one archive."""

    provides: ClassVar[Stage] = "dataset"

    def __init__(
        self,
        source: Source,
        var_name: str | None = None,
        *,
        catalog: CatalogArg = None,
        storage_options: Mapping[str, Any] | None = None,
        strict: bool = False,
    ) -> None:
        self.source = source
        self.opener = MLCastOpener(_Nothing(), var_name, catalog, storage_options, strict)

    def __iter__(self) -> Iterator[xr.DataArray]:
        yield self.opener.open(self.source)

    def __len__(self) -> int:
        return 1


class _Nothing(IterDataPipe[Any]):
    """An empty datapipe (a placeholder upstream)."""

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class MLCastCatalogDataset(_SingleSource):
    """Open one archive of an MLCast intake catalog by id (full, short or ``"demo"``).

    Examples
    --------
    >>> from mlcast_pipes import MLCastCatalogDataset
    >>> MLCastCatalogDataset("demo").source
    'demo'

    """

    def __init__(
        self,
        dataset_id: str,
        var_name: str | None = None,
        *,
        catalog: CatalogArg = None,
        storage_options: Mapping[str, Any] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(
            dataset_id,
            var_name,
            catalog=catalog,
            storage_options=storage_options,
            strict=strict,
        )


class OpenXarrayDataset(_SingleSource):
    """Open one zarr archive by local path, fsspec URL (with ``storage_options``) or xarray object.

    Examples
    --------
    >>> from mlcast_pipes import OpenXarrayDataset
    >>> OpenXarrayDataset("/data/radar.zarr", var_name="rr").source
    '/data/radar.zarr'

    """

    def __init__(
        self,
        url: Source,
        var_name: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(
            url,
            var_name,
            storage_options=storage_options,
            strict=strict,
        )

"""Tiling plans: an opened archive is summarised (and fingerprinted) once, not every epoch."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

import mlcast_pipes.dataset.ids as ids
from mlcast_pipes.dataset import open_mlcast
from mlcast_pipes.indexes.plan import _INFOS, dataset_info


def test_an_opened_array_is_fingerprinted_once(
    tiny_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    sample = ids._chunk_sample

    def counted(spec, n_frames):  # type: ignore[no-untyped-def]
        calls.append(spec.url)
        return sample(spec, n_frames)

    monkeypatch.setattr(ids, "_chunk_sample", counted)
    da = open_mlcast(tiny_archive)
    first = dataset_info(da)
    assert dataset_info(da) is first and len(calls) == 1  # no store reads the second time
    part = da.isel(time=slice(0, 12))  # another array (same encoding): its own fingerprint
    assert dataset_info(part).fingerprint != first.fingerprint and len(calls) == 2
    again = open_mlcast(tiny_archive)  # opened again: summarised again, to the same result
    assert dataset_info(again) == first and len(calls) == 3
    n = len(_INFOS)
    del da, part, again
    gc.collect()
    assert len(_INFOS) == n - 3  # forgotten with their arrays

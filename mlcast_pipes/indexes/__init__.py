"""Every file the pipeline writes and reads back: format, tiling and sampling indexes, statistics.

``format``/``index_csv``: ids, schemas, sidecars, atomic writes; ``tiling``/``plan``: the tiling
index; ``sampling``: sampling indexes; ``stats``/``sampling_stats``: fitted statistics;
``community``: community sampler files; ``training_copy``: local copies of an epoch's tiles.
"""

__all__: list[str] = []

"""The one progress-bar style of every long pass (prepare, demo, statistics, copies, bench).

A tqdm bar on stderr that appears only once a pass has run for :data:`DELAY_S` seconds, so short
passes stay silent; ``progress=False`` (CLI ``--no-progress``, or ``TQDM_DISABLE=1``) hides it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DELAY_S", "progress_bar"]

#: Seconds a pass runs before its bar appears.
DELAY_S = 2.0


def progress_bar(
    total: int | None, desc: str, *, unit: str = "frames", enabled: bool = True, **kw: Any
) -> Any:
    """A tqdm progress bar on stderr, shown once the pass has run :data:`DELAY_S` seconds.

    ``total`` None shows a counter; ``enabled=False`` draws nothing; other keywords go to
    :class:`tqdm.tqdm` (``delay=0`` shows it at once). Use it as a context manager.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with progress_bar(3, "decode", file=out, delay=0) as bar:
    ...     for _ in range(3):
    ...         _ = bar.update(1)
    >>> "decode: 100%" in out.getvalue(), "3/3" in out.getvalue()
    (True, True)

    """
    from tqdm.auto import tqdm

    kw.setdefault("delay", DELAY_S)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, **kw)

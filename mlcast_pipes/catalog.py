"""Intake-v1 YAML catalogs of MLCast archives: reading, the bundled catalog and id resolution.

Ids such as ``demo`` or ``precipitation.dmi_10_minutes`` become zarr URLs here, without intake.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from mlcast_pipes.errors import CatalogError

__all__ = [
    "BUNDLED_CATALOG",
    "CACHE_ENV",
    "CatalogEntry",
    "CatalogLike",
    "community_catalog",
    "demo_cache_dir",
    "demo_store_name",
    "load_catalog",
    "resolve_entry",
    "resolve_urlpath",
]

#: The catalog shipped with the package (root file; ``precipitation.yml`` sits beside it).
BUNDLED_CATALOG = pathlib.Path(__file__).parent / "data" / "catalog.yml"

#: The community's catalog package; when installed, its catalog replaces the bundled mirror.
COMMUNITY_PACKAGE = "mlcast_datasets"

#: Environment variable naming the cache folder (demo archives, default index folder).
CACHE_ENV = "MLCAST_PIPES_CACHE"

#: A catalog argument: a YAML file path or URL, an already parsed mapping, or None (bundled).
CatalogLike = str | os.PathLike[str] | Mapping[str, Any] | None

#: Drivers whose entries are nested catalogs (intake's short and long names).
CATALOG_DRIVERS = frozenset(
    {"yaml_file_cat", "intake.catalog.local.YAMLFileCatalog", "YAMLFileCatalog"}
)
#: Drivers mlcast-pipes can open as zarr stores.
ZARR_DRIVERS = frozenset({"zarr", "intake_xarray.xzarr.ZarrSource", "ZarrSource"})
#: Driver of the synthetic demo archive, generated into the cache on first use.
DEMO_DRIVER = "mlcast_demo"
#: Environment variable naming (comma-separated) the variables ``{{ env(NAME) }}`` may read.
CATALOG_ENV_ENV = "MLCAST_PIPES_CATALOG_ENV"
#: What a demo preset name may hold (it becomes part of a file name in the cache folder).
_PRESET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

# metadata keys that may name the data variable of an entry
_VAR_KEYS = ("variable", "var_name", "data_var", "data_variable", "variables")
_CATALOG_DIR_RE = re.compile(r"\{\{\s*CATALOG_DIR\s*\}\}")
_ENV_RE = re.compile(r"""\{\{\s*env\(\s*["']?([A-Za-z_][A-Za-z0-9_]*)["']?\s*\)\s*\}\}""")
_PARAM_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_HTTP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CatalogEntry:
    """One data source of a catalog, with templates resolved.

    ``id`` is the dotted full id (nested catalog names, then the entry's ``name``); ``urlpath`` a
    local path or fsspec URL (for ``mlcast_demo``: the cache location); ``var_name`` the entry's
    ``variable`` hint; ``args`` all rendered arguments.

    Examples
    --------
    >>> source = {
    ...     "driver": "zarr",
    ...     "args": {"urlpath": "s3://bucket/radar.zarr", "storage_options": {"anon": True}},
    ...     "metadata": {"variable": "rr"},
    ... }
    >>> entry = load_catalog({"sources": {"my_radar": source}})["my_radar"]
    >>> entry.driver, entry.urlpath, entry.storage_options, entry.var_name
    ('zarr', 's3://bucket/radar.zarr', {'anon': True}, 'rr')

    """

    id: str
    name: str
    driver: str
    urlpath: str
    storage_options: dict[str, Any]
    consolidated: bool | None
    var_name: str | None
    description: str
    metadata: dict[str, Any]
    args: dict[str, Any] = field(default_factory=dict, compare=False)


def demo_cache_dir() -> pathlib.Path:
    """The cache folder: ``$MLCAST_PIPES_CACHE``, else ``~/.cache/mlcast-pipes``.

    Examples
    --------
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"MLCAST_PIPES_CACHE": "/scratch/mlcast"}):
    ...     print(demo_cache_dir().as_posix())
    /scratch/mlcast

    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "mlcast-pipes"


def demo_store_name(preset: str, seed: int) -> str:
    """Folder name of a cached demo archive inside :func:`demo_cache_dir`.

    Examples
    --------
    >>> demo_store_name("tiny", 3)
    'demo-tiny-seed3.zarr'

    """
    return f"demo-{preset}-seed{seed}.zarr"


def load_catalog(catalog: CatalogLike = None) -> dict[str, CatalogEntry]:
    """Read an intake-v1 YAML catalog and its nested catalogs into ``{full id: CatalogEntry}``.

    ``catalog``: a file path or URL, a parsed mapping, or None for the bundled catalog (whose
    community entries come from ``mlcast-datasets`` when installed). Nested catalogs give dotted
    ids. Templates: ``{{ CATALOG_DIR }}``, ``{{ env(NAME) }}`` (only names listed in
    ``$MLCAST_PIPES_CATALOG_ENV``) and user-parameter defaults. Raises :class:`CatalogError`
    naming the file and key when a file is missing, not YAML, or lacks a key.

    Examples
    --------
    >>> entries = load_catalog()
    >>> "precipitation.dmi_10_minutes" in entries and "demo" in entries
    True

    """
    entries: dict[str, CatalogEntry] = {}
    if catalog is None:
        _read_file(_as_location(BUNDLED_CATALOG), "", entries, (), referrer=None)
        community = community_catalog()
        if community is not None:
            _use_community_entries(entries, load_catalog(community))
        return entries
    if isinstance(catalog, Mapping):
        _read_sources(catalog, "<catalog mapping>", os.getcwd(), "", entries, ())
        return entries
    if not isinstance(catalog, str | os.PathLike):
        raise CatalogError(
            f"catalog must be a YAML file path, a URL, a mapping or None, not "
            f"{type(catalog).__name__}; pass the path of an intake catalog file."
        )
    _read_file(_as_location(catalog), "", entries, (), referrer=None)
    return entries


def community_catalog() -> pathlib.Path | None:
    """The root catalog file of the installed ``mlcast-datasets`` package (not imported), or None.

    Examples
    --------
    >>> path = community_catalog()
    >>> path is None or path.name == "catalog.yml"
    True

    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(COMMUNITY_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = pathlib.Path(folder) / "catalog" / "catalog.yml"
        if path.is_file():
            return path
    return None


def _use_community_entries(
    entries: dict[str, CatalogEntry], community: Mapping[str, CatalogEntry]
) -> None:
    """Replace the mirrored community entries by the installed package's, keeping our hints."""
    mirrored = {fid: e for fid, e in entries.items() if e.driver != DEMO_DRIVER}
    for fid in mirrored:
        del entries[fid]
    for fid, entry in community.items():
        old = mirrored.get(fid)
        if old is not None:
            metadata = {**old.metadata, **entry.metadata}
            entry = dataclasses.replace(
                entry, metadata=metadata, var_name=entry.var_name or old.var_name
            )
        entries[fid] = entry


def resolve_entry(dataset_id: str, catalog: CatalogLike = None) -> CatalogEntry:
    """Find a catalog entry by full id or by a unique trailing part of it (None: bundled catalog).

    Raises :class:`CatalogError` when nothing matches (close matches are suggested) or a short
    name is ambiguous.

    Examples
    --------
    >>> resolve_entry("dmi_10_minutes").id
    'precipitation.dmi_10_minutes'

    """
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise CatalogError(
            f"dataset id must be a non-empty string, got {dataset_id!r}; pass a catalog id such "
            "as 'demo' or 'precipitation.dmi_10_minutes'."
        )
    entries = load_catalog(catalog)
    where = _describe_catalog(catalog)
    if dataset_id in entries:
        return entries[dataset_id]
    matches = [e for fid, e in entries.items() if fid.endswith("." + dataset_id)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        ids = ", ".join(repr(e.id) for e in matches)
        raise CatalogError(
            f"dataset id {dataset_id!r} is ambiguous in {where}: it matches {ids}. "
            "Pass the full id."
        )
    raise CatalogError(_unknown_id_message(dataset_id, list(entries), where))


def resolve_urlpath(entry: CatalogEntry) -> str:
    """The path or URL to open for an entry; a ``mlcast_demo`` entry is generated on first use.

    Raises :class:`CatalogError` if a demo folder cannot be created, :class:`ParameterError` for a
    bad demo preset or seed.

    Examples
    --------
    >>> resolve_urlpath(resolve_entry("dmi_10_minutes"))
    's3://mlcast-source-datasets/dmi/v0.1.1/dmi_10_minutes.zarr/'
    >>> from unittest import mock
    >>> tiny = {"driver": "mlcast_demo", "args": {"preset": "tiny", "seed": 0}}
    >>> with mock.patch.dict(os.environ, {CACHE_ENV: "cache"}):
    ...     entry = load_catalog({"sources": {"tiny_demo": tiny}})["tiny_demo"]
    >>> resolve_urlpath(entry)
    'cache/demo-tiny-seed0.zarr'

    """
    if entry.driver != DEMO_DRIVER:
        return entry.urlpath
    from mlcast_pipes.demo import PRESETS, ensure_demo

    preset = str(entry.args.get("preset", "small"))
    if preset not in PRESETS:  # checked before anything is created
        raise CatalogError(
            f"unknown demo preset {preset!r} in catalog entry {entry.id!r}; choose one of "
            f"{sorted(PRESETS)}."
        )
    path = pathlib.Path(entry.urlpath)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatalogError(
            f"cannot create the cache folder {path.parent} for the demo archive ({exc}); set "
            f"${CACHE_ENV} to a writable folder."
        ) from exc
    seed = int(entry.args.get("seed", 0))
    return str(ensure_demo(path, preset, seed))


# --------------------------------------------------------------------------------------------
# reading


def _as_location(value: str | os.PathLike[str]) -> str:
    """Turn a catalog file argument into a local absolute path or a URL string."""
    text = os.fspath(value)
    if _is_url(text):
        if text.startswith("file://"):
            return os.path.abspath(text[len("file://") :])
        return text
    return os.path.abspath(os.path.expanduser(text))


def _is_url(text: str) -> bool:
    return "://" in text


def _dirname(location: str) -> str:
    if _is_url(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(location)


def _join(base: str, relative: str) -> str:
    if _is_url(relative):
        return relative
    if os.path.isabs(relative):
        return os.path.normpath(relative)
    if _is_url(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest + '/' + relative)}"
    return os.path.normpath(os.path.join(base, os.path.expanduser(relative)))


def _read_text(location: str, referrer: str | None) -> str:
    """Text of a catalog file (local or fsspec URL) with a clear error when it is absent."""
    via = f" (referenced by {referrer})" if referrer else ""
    if not _is_url(location):
        try:
            return pathlib.Path(location).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise CatalogError(
                f"catalog file {location} does not exist{via}; check the path."
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(
                f"cannot read catalog file {location}{via}: {exc}; pass a readable YAML file."
            ) from exc
    import fsspec

    options: dict[str, Any] = {}
    if location.startswith(("http://", "https://")):
        import aiohttp

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=_HTTP_TIMEOUT_S)}
    try:
        with fsspec.open(location, "rt", encoding="utf-8", **options) as fh:
            return str(fh.read())
    except Exception as exc:
        raise CatalogError(
            f"cannot read catalog {location}{via}: {type(exc).__name__}: {exc}; check the URL "
            "and the network, or download the file and pass its local path."
        ) from exc


def _read_file(
    location: str,
    prefix: str,
    entries: dict[str, CatalogEntry],
    stack: tuple[str, ...],
    referrer: str | None,
) -> None:
    if location in stack:
        chain = " -> ".join([*stack, location])
        raise CatalogError(
            f"catalog files include each other in a loop ({chain}); remove the nested entry "
            "that points back."
        )
    text = _read_text(location, referrer)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(
            f"catalog file {location} is not valid YAML: {exc}. Fix the file (intake-v1 "
            "catalog format: a 'sources:' mapping of entries)."
        ) from exc
    _read_sources(doc, location, _dirname(location), prefix, entries, (*stack, location))


def _read_sources(
    doc: Any,
    where: str,
    catalog_dir: str,
    prefix: str,
    entries: dict[str, CatalogEntry],
    stack: tuple[str, ...],
) -> None:
    if not isinstance(doc, Mapping):
        raise CatalogError(
            f"catalog {where} must be a YAML mapping with a 'sources' key, found "
            f"{type(doc).__name__}; use the intake-v1 catalog format."
        )
    if "sources" not in doc:
        raise CatalogError(
            f"catalog {where} has no 'sources' key (top-level keys: {sorted(map(str, doc))}); "
            "list the datasets under 'sources:'."
        )
    sources = doc["sources"]
    if sources is None:
        return
    if not isinstance(sources, Mapping):
        raise CatalogError(
            f"key 'sources' of catalog {where} must be a mapping of entry names to entries, found "
            f"{type(sources).__name__}."
        )
    for raw_name, spec in sources.items():
        name = str(raw_name)
        key = f"sources.{name}"
        full_id = f"{prefix}{name}"
        if not isinstance(spec, Mapping):
            raise CatalogError(
                f"entry {key!r} of catalog {where} must be a mapping with 'driver' and 'args', "
                f"found {type(spec).__name__}."
            )
        driver = spec.get("driver")
        if not isinstance(driver, str) or not driver:
            raise CatalogError(
                f"entry {key!r} of catalog {where} has no 'driver' (key '{key}.driver'); add one, "
                "e.g. 'driver: zarr'."
            )
        args_raw = spec.get("args", {})
        if args_raw is None:
            args_raw = {}
        if not isinstance(args_raw, Mapping):
            raise CatalogError(
                f"key '{key}.args' of catalog {where} must be a mapping, found "
                f"{type(args_raw).__name__}."
            )
        params = _parameter_defaults(spec.get("parameters"))
        args = _render(dict(args_raw), catalog_dir, params, where, f"{key}.args")
        if not isinstance(args, dict):  # pragma: no cover - _render keeps mappings
            raise CatalogError(f"key '{key}.args' of catalog {where} must be a mapping.")
        if driver in CATALOG_DRIVERS:
            path = args.get("path")
            if not isinstance(path, str) or not path:
                raise CatalogError(
                    f"nested catalog entry {key!r} of catalog {where} has no 'args.path' (key "
                    f"'{key}.args.path'); give the path of the nested catalog file."
                )
            _read_file(
                _join(catalog_dir, path),
                f"{full_id}.",
                entries,
                stack,
                referrer=f"'{key}.args.path' in {where}",
            )
            continue
        entries[full_id] = _make_entry(full_id, name, driver, spec, args, catalog_dir, where, key)


def _make_entry(
    full_id: str,
    name: str,
    driver: str,
    spec: Mapping[str, Any],
    args: dict[str, Any],
    catalog_dir: str,
    where: str,
    key: str,
) -> CatalogEntry:
    metadata_raw = spec.get("metadata") or {}
    if not isinstance(metadata_raw, Mapping):
        raise CatalogError(
            f"key '{key}.metadata' of catalog {where} must be a mapping, found "
            f"{type(metadata_raw).__name__}."
        )
    metadata = dict(metadata_raw)
    description = spec.get("description") or ""
    if driver == DEMO_DRIVER:
        preset = args.get("preset", "small")
        seed = args.get("seed", 0)
        if not isinstance(preset, str) or not _PRESET_RE.fullmatch(preset):
            raise CatalogError(
                f"key '{key}.args.preset' of catalog {where} must be a preset name such as "
                f"'small', found {preset!r}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise CatalogError(
                f"key '{key}.args.seed' of catalog {where} must be an integer >= 0, found {seed!r}."
            )
        args = {**args, "preset": preset, "seed": seed}
        urlpath = str(demo_cache_dir() / demo_store_name(preset, seed))
        storage_options: dict[str, Any] = {}
        consolidated: bool | None = True
    else:
        url = args.get("urlpath")
        if isinstance(url, list | tuple) and len(url) == 1:
            url = url[0]
        if not isinstance(url, str) or not url:
            raise CatalogError(
                f"entry {key!r} of catalog {where} has no 'args.urlpath' (key "
                f"'{key}.args.urlpath'); give the path or URL of the zarr store."
            )
        urlpath = url if _is_url(url) else _join(catalog_dir, url)
        so = args.get("storage_options") or {}
        if not isinstance(so, Mapping):
            raise CatalogError(
                f"key '{key}.args.storage_options' of catalog {where} must be a mapping, found "
                f"{type(so).__name__}."
            )
        storage_options = dict(so)
        cons = args.get("consolidated")
        if cons is not None and not isinstance(cons, bool):
            raise CatalogError(
                f"key '{key}.args.consolidated' of catalog {where} must be true or false, found "
                f"{cons!r}."
            )
        consolidated = cons
    return CatalogEntry(
        id=full_id,
        name=name,
        driver=driver,
        urlpath=urlpath,
        storage_options=storage_options,
        consolidated=consolidated,
        var_name=_var_hint(metadata),
        description=str(description).strip(),
        metadata=metadata,
        args=args,
    )


def _var_hint(metadata: Mapping[str, Any]) -> str | None:
    for k in _VAR_KEYS:
        value = metadata.get(k)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list | tuple) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
    return None


def _parameter_defaults(parameters: Any) -> dict[str, Any]:
    if not isinstance(parameters, Mapping):
        return {}
    out: dict[str, Any] = {}
    for name, spec in parameters.items():
        if isinstance(spec, Mapping) and "default" in spec:
            out[str(name)] = spec["default"]
    return out


def _allowed_env() -> set[str]:
    """Environment variables a catalog may read: those named in ``$MLCAST_PIPES_CATALOG_ENV``."""
    return {n.strip() for n in os.environ.get(CATALOG_ENV_ENV, "").split(",") if n.strip()}


def _render(value: Any, catalog_dir: str, params: Mapping[str, Any], where: str, key: str) -> Any:
    """Render the template subset intake catalogs use in arguments, recursively."""
    if isinstance(value, Mapping):
        return {
            str(k): _render(v, catalog_dir, params, where, f"{key}.{k}") for k, v in value.items()
        }
    if isinstance(value, list):
        return [_render(v, catalog_dir, params, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "{{" not in value:
        return value
    # a whole-string parameter keeps its type (e.g. an int seed)
    whole = _PARAM_RE.fullmatch(value.strip())
    if whole and whole.group(1) in params:
        return params[whole.group(1)]
    text = _CATALOG_DIR_RE.sub(lambda _m: catalog_dir, value)

    def _env(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _allowed_env():
            raise CatalogError(
                f"key '{key}' of catalog {where} asks for environment variable {name!r}; a "
                "catalog may only read the variables you name (it could send their values to a "
                f"host it chooses). Fix: if you trust this catalog, add {name} to "
                f"${CATALOG_ENV_ENV} (names separated by commas), or edit the catalog."
            )
        if name not in os.environ:
            raise CatalogError(
                f"key '{key}' of catalog {where} uses environment variable {name!r}, which is "
                "not set; set it or edit the catalog."
            )
        return os.environ[name]

    text = _ENV_RE.sub(_env, text)
    text = _PARAM_RE.sub(
        lambda m: str(params[m.group(1)]) if m.group(1) in params else m.group(0), text
    )
    if "{{" in text:
        raise CatalogError(
            f"key '{key}' of catalog {where} holds a template mlcast-pipes cannot render: "
            f"{value!r}. Supported: {{{{ CATALOG_DIR }}}}, {{{{ env(NAME) }}}} and parameters "
            "with a default; write the value out instead."
        )
    return text


def _describe_catalog(catalog: CatalogLike) -> str:
    if catalog is None:
        return "the bundled catalog"
    if isinstance(catalog, Mapping):
        return "the catalog mapping"
    return f"catalog {os.fspath(catalog)}"


def _unknown_id_message(dataset_id: str, ids: list[str], where: str) -> str:
    names = sorted({*ids, *(i.rsplit(".", 1)[-1] for i in ids)})
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(dataset_id.lower(), list(lower), n=5, cutoff=0.5)
    suggestion = ""
    if close:
        suggestion = " Did you mean " + ", ".join(repr(lower[c]) for c in close) + "?"
    available = ", ".join(ids) if ids else "(none)"
    return (
        f"unknown dataset id {dataset_id!r} in {where}.{suggestion} Available ids: {available}. "
        "Pass one of these, a local zarr path or a URL (s3://, https://, ...)."
    )

"""Scenes from STAC: a static catalog, collection or ItemCollection, or a STAC API search, read where they lie.

`resolve_stac` turns a `StacSource` into `StacScene` records (item id, the asset's GDAL path, the asset's
identity); `pystac` reads static files and `pystac-client` searches APIs. A remote asset is never downloaded:
GDAL reads each window's bytes through `/vsicurl/` (http, https) or `/vsis3/` (s3://), with the settings in
`REMOTE_GDAL_OPTIONS`.

Credentials come from the environment only (AWS_* for /vsis3/; GDAL_HTTP_HEADERS, GDAL_HTTP_USERPWD or
GDAL_HTTP_BEARER for http, whose headers this module also sends with its own STAC and HEAD requests). They never
enter a path, so they never reach a log line, an output, a provenance record or an error; `redact` strips
what a user may still have put in an href (user:password@, query strings such as presigned signatures).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fpn_geo.errors import InputError

# GDAL's defaults suit local files. Read over HTTP they turn one window into many round trips, so each is set
# unless the environment already says otherwise (`apply_remote_gdal_options`):
REMOTE_GDAL_OPTIONS: dict[str, str] = {
    # Opening a file lists its "folder" to find sidecars (.aux.xml, .msk, .ovr): on object storage that is
    # one or more extra requests per open, and COGs keep masks and overviews inside.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # Only these suffixes are fetched through /vsicurl/: no probe requests for sidecar files.
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.jp2",
    # GDAL's per-file block cache for /vsi files: a window's halo re-reads the same tiles, and so do
    # neighbouring windows; 64 MB (VSI_CACHE_SIZE, per open file) holds a block of 4x4 windows' tiles.
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 << 20),
    # Adjacent tiles of one window go in one ranged GET instead of one each.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # A HTTP/2 connection carries many range requests at once where the server speaks it.
    "GDAL_HTTP_MULTIPLEX": "YES",
    # Transient errors (429, 502, 503, 504) are retried by GDAL itself before a read fails; what is left is a
    # failed block task, which Prefect retries (process-blocks: retries=2).
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    # The header (IFD) of a COG is usually within its first 16 KB; GDAL's first read takes this much.
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
}

SECRET_QUERY = re.compile(r"(?P<url>://[^\s?'\"]*)\?[^\s'\"]*")
USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")


class RedactingFilter(logging.Filter):
    """Rewrites a log record's message with `redact`: GDAL's HTTP warnings ("HTTP error code: 503 - URL. Retrying")
    name the URL, query string included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


GDAL_LOGGERS = ("rasterio._err", "rasterio._env", "rasterio._io", "rasterio")


def apply_remote_gdal_options(environ: dict[str, str] | None = None) -> None:
    """Set `REMOTE_GDAL_OPTIONS` in the environment where they are not set yet, so every GDAL open in this process
    (rasterio reads the environment at each open) uses them, and redact URLs in GDAL's log lines; call it in each
    process that reads remote scenes."""
    env = os.environ if environ is None else environ
    for key, value in REMOTE_GDAL_OPTIONS.items():
        env.setdefault(key, value)
    for name in GDAL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def redact(text: str) -> str:
    """`text` with every URL's user:password@ and query string (presigned signatures, tokens) replaced by `***`,
    for log lines, errors and records."""
    return SECRET_QUERY.sub(r"\g<url>?***", USERINFO.sub(r"\g<scheme>***@", text))


def gdal_path(href: str) -> str:
    """The path GDAL reads an asset href by: /vsicurl/ for http(s), /vsis3/ for s3://, /vsigs/ for gs://, a local
    path for file:// or a plain path. The href is read in place, never downloaded."""
    parts = urllib.parse.urlsplit(href)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if scheme == "s3":
        return f"/vsis3/{parts.netloc}{parts.path}"
    if scheme == "gs":
        return f"/vsigs/{parts.netloc}{parts.path}"
    if scheme == "file":
        return urllib.parse.unquote(parts.path)
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        raise InputError(
            f"asset href {redact(href)} has scheme {scheme}://; expected http(s)://, s3://, gs:// or a path"
        )
    return href


def http_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The HTTP headers GDAL sends (GDAL_HTTP_HEADERS: "Name: value" lines; GDAL_HTTP_BEARER; GDAL_HTTP_USERPWD
    as basic auth), so that STAC requests and HEAD requests carry the same credentials as GDAL's reads."""
    env = os.environ if environ is None else environ
    headers: dict[str, str] = {}
    for line in re.split(r"\r?\n", env.get("GDAL_HTTP_HEADERS", "")):
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip()] = value.strip()
    if env.get("GDAL_HTTP_BEARER"):
        headers["Authorization"] = f"Bearer {env['GDAL_HTTP_BEARER']}"
    elif env.get("GDAL_HTTP_USERPWD") and "Authorization" not in headers:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(env["GDAL_HTTP_USERPWD"].encode()).decode()
    return headers


class StacSource(BaseModel):
    """Where the scenes are catalogued, and which asset of each item to segment (a flow parameter).

    url: a STAC API's landing page (searched with pystac-client), or a static catalog, collection,
      ItemCollection or item, as a file path or URL (walked with pystac).
    collections, bbox (west, south, east, north in WGS84), intersects (GeoJSON geometry), datetime
    ("2024-01-01/2024-02-01", "2024-01-01/.."), query (the Query extension) and filter (CQL2-JSON): the API
    search; a static source takes none of them.
    asset: the key of the item's asset to segment, e.g. "visual" or "image".
    max_items: at most this many items (None: all).
    """

    model_config = ConfigDict(extra="forbid")

    url: str
    asset: str = "visual"
    collections: list[str] | None = None
    bbox: list[float] | None = Field(default=None, min_length=4, max_length=4)
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    query: dict[str, Any] | None = None
    filter: dict[str, Any] | None = None
    max_items: int | None = Field(default=None, gt=0)

    def searches(self) -> bool:
        """Whether any search parameter is given (only an API can answer them)."""
        return any(v is not None for v in (self.collections, self.bbox, self.intersects, self.datetime,
                                           self.query, self.filter))


@dataclass(frozen=True)
class StacScene:
    """One item's asset to segment: what the flow reads, names and keys its skip rule on.

    path: what GDAL opens (/vsicurl/https://..., /vsis3/bucket/key or a local path).
    identity: the asset's version, "etag:...", "size:N;modified:DATE", "checksum:..." or "sha256:..."; None when
      neither the server nor the item says (then the scene is never taken as up to date).
    item_href: the source item's own URL or path, for the output item's `derived_from` link (redacted).
    """

    item_id: str
    collection: str | None
    asset_key: str
    href: str
    path: str
    identity: str | None
    item_href: str | None
    item_datetime: str | None
    geometry: dict | None

    @property
    def display(self) -> str:
        """How logs and errors name the scene: the item id and the asset's href without credentials."""
        return f"{self.item_id} ({redact(self.href)})"


def select_asset(item, key: str):
    """The item's asset `key`, or an InputError that lists the keys the item has."""
    asset = item.assets.get(key)
    if asset is None:
        have = ", ".join(sorted(item.assets)) or "none"
        raise InputError(f"STAC item {item.id} has no asset {key!r}; its assets: {have}; pass asset=<one of them>")
    return asset


def _file_ext_identity(asset) -> str | None:
    """What the item itself says of the asset's version (the file extension's checksum or size)."""
    fields = asset.extra_fields
    if fields.get("file:checksum"):
        return f"checksum:{fields['file:checksum']}"
    return None


def http_identity(url: str, headers: Mapping[str, str] | None = None, timeout: float = 30) -> str | None:
    """The version a HTTP server gives a file in a HEAD answer: its ETag, else its size and Last-Modified."""
    req = urllib.request.Request(url, method="HEAD", headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            etag, size, modified = (resp.headers.get(h) for h in ("ETag", "Content-Length", "Last-Modified"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InputError(f"cannot reach asset {redact(url)}: {redact(str(getattr(e, 'reason', e)))}") from None
    if etag:
        return f"etag:{etag}"
    if size and modified:
        return f"size:{size};modified:{modified}"
    return None


def asset_identity(asset, href: str, headers: Mapping[str, str] | None = None) -> str | None:
    """The asset's identity for the skip rule: the item's file:checksum, else the server's ETag or size and date
    (a HEAD request), else the sha256 of a local file; None for a remote file nobody versions."""
    said = _file_ext_identity(asset)
    if said:
        return said
    scheme = urllib.parse.urlsplit(href).scheme.lower()
    if scheme in ("http", "https"):
        return http_identity(href, headers)
    path = gdal_path(href)
    if os.path.isfile(path):
        from fpn_geo.hashing import sha256_file

        return f"sha256:{sha256_file(path)}"
    size, updated = asset.extra_fields.get("file:size"), asset.owner.properties.get("updated") if asset.owner else None
    return f"size:{size};modified:{updated}" if size and updated else None


def _open_static(url: str, headers: Mapping[str, str]):
    """A static STAC file (catalog, collection, ItemCollection or item) read with pystac."""
    import pystac
    from pystac.stac_io import DefaultStacIO

    try:
        return pystac.read_file(url, stac_io=DefaultStacIO(headers=dict(headers)))
    except Exception as e:  # pystac raises many kinds (STACTypeError, HTTPError, JSON errors, OSError)
        raise InputError(f"cannot read STAC {redact(url)}: {redact(_reason(e))}") from None


def _reason(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _is_api(stac_object) -> bool:
    """A STAC API landing page: a catalog that declares item search conformance."""
    conforms = getattr(stac_object, "extra_fields", {}).get("conformsTo") or []
    return any("item-search" in c for c in conforms)


def _static_items(stac_object) -> Iterator:
    import pystac

    if isinstance(stac_object, pystac.Item):
        yield stac_object
    elif isinstance(stac_object, pystac.ItemCollection):
        yield from stac_object.items
    else:
        yield from stac_object.get_items(recursive=True)


def _search_items(source: StacSource, headers: Mapping[str, str]) -> Iterator:
    from pystac_client import Client

    try:
        client = Client.open(source.url, headers=dict(headers))
        search = client.search(
            collections=source.collections, bbox=source.bbox, intersects=source.intersects,
            datetime=source.datetime, query=source.query, filter=source.filter, max_items=source.max_items,
        )
        yield from search.items()
    except InputError:
        raise
    except Exception as e:  # pystac_client.APIError, requests' errors, NotImplementedError (no search)
        raise InputError(f"STAC search at {redact(source.url)} failed: {redact(_reason(e))}") from None


def stac_items(source: StacSource, headers: Mapping[str, str] | None = None) -> Iterator:
    """The pystac Items of the source: a STAC API is searched; a static file is walked (and takes no search
    parameter: they would silently select nothing or everything)."""
    headers = http_headers() if headers is None else headers
    opened = _open_static(source.url, headers)
    if _is_api(opened):
        yield from _search_items(source, headers)
        return
    if source.searches():
        raise InputError(
            f"{redact(source.url)} is a static STAC {type(opened).__name__}; collections, bbox, intersects, "
            "datetime, query and filter need a STAC API (one whose landing page conforms to item-search)"
        )
    for n, item in enumerate(_static_items(opened)):
        if source.max_items is not None and n >= source.max_items:
            return
        yield item


def scene_of(item, asset_key: str, headers: Mapping[str, str] | None = None) -> StacScene:
    """The StacScene of one pystac Item's asset: its GDAL path, identity and source links."""
    asset = select_asset(item, asset_key)
    href = asset.get_absolute_href() or asset.href
    self_href = item.get_self_href()
    return StacScene(
        item_id=item.id, collection=item.collection_id, asset_key=asset_key, href=href, path=gdal_path(href),
        identity=asset_identity(asset, href, http_headers() if headers is None else headers),
        item_href=redact(self_href) if self_href else None,
        item_datetime=item.datetime.isoformat() if item.datetime else item.properties.get("start_datetime"),
        geometry=item.geometry,
    )


def resolve_stac(source: StacSource | Mapping[str, Any]) -> list[StacScene]:
    """Every item of the source as a StacScene, in item-id order (the merge's order), ids unique."""
    source = source if isinstance(source, StacSource) else StacSource.model_validate(dict(source))
    headers = http_headers()
    scenes: dict[str, StacScene] = {}
    for item in stac_items(source, headers):
        if item.id in scenes:
            continue  # an item reachable twice in a catalog, or on two pages of a search
        scenes[item.id] = scene_of(item, source.asset, headers)
    return [scenes[k] for k in sorted(scenes)]

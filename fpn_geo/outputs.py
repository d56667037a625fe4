"""Writing outputs safely: one atomic write, output paths checked before any work, verified files, no leftovers.

Use `atomic_output(final)` for every file fpn-geo writes. It hands out a hidden temporary path beside the
target (same folder, so the rename never crosses filesystems), and only when the block ends without an
exception does it verify the file, fsync it and rename it into place. On any exception, KeyboardInterrupt
and (with `fpn_geo.signals.terminate_as_interrupt`) SIGTERM included, the temporary file and its SQLite side
files are removed and the old output is left untouched. A run killed with SIGKILL leaves its temporary
file; `sweep_stale_temps(folder)` removes such files once their process is gone.

A run holds a shared lock (flock) on each folder it writes temporary files in (`FolderClaim`), and a sweep first
tries that folder's lock alone. Got alone, no fpn-geo run anywhere on this kernel is writing there (another
container's included, whose pids this one cannot see), so what a dead pid left is swept at once; otherwise, or
where the filesystem has no flock, only once it is over a minute old.

Temporary names: `.NAME.fpn-geo-PID-RANDOM.tmpSUFFIX` (SUFFIX: the target's, so drivers that go by the
extension still see it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpn_geo.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: no claims, sweeps keep the minute's rule
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Files that SQLite (a GeoPackage) and GDAL (a COG's overviews while they are built) put beside a file.
SIDE_FILES = ("-journal", "-wal", "-shm", ".ovr.tmp", ".ovr", ".aux.xml", ".msk")
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.fpn-geo-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8})\.tmp(?P<rest>.*)$")
STALE_AFTER_S = 60.0  # a dead pid's temp this old is left over; younger, it may be another container's pid (unless
# the sweep holds the folder's lock alone: then no run is writing there)
ABANDONED_AFTER_S = 7 * 24 * 3600.0  # untouched this long: left over whatever its pid says (pids are reused)
VECTOR_SUFFIXES_REFUSED = {".shp": "an ESRI Shapefile", ".geojson": "GeoJSON", ".json": "JSON", ".gml": "GML",
                           ".kml": "KML", ".csv": "CSV", ".fgb": "FlatGeobuf", ".tif": "a GeoTIFF",
                           ".tiff": "a GeoTIFF"}

Verifier = Callable[[Path], None]


def temp_path(final: str | Path) -> Path:
    """A hidden, unique temporary path beside `final`, with `final`'s suffix last."""
    final = Path(final)
    return final.with_name(f".{final.name}.fpn-geo-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{final.suffix}")


def remove_temp(tmp: Path) -> None:
    """Remove a temporary file and the SQLite side files GDAL or sqlite3 may have left beside it."""
    for p in (tmp, *(Path(f"{tmp}{s}") for s in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingOutput:
    """A temporary file that becomes `final` on `commit()`, or disappears on `discard()`.

    Use it where a file is written in one place and committed in another (a GeoPackage streamed for minutes,
    committed with its provenance); everywhere else `atomic_output` is simpler.
    """

    def __init__(self, final: str | Path, verify: Verifier | None = None) -> None:
        self.final = Path(final)
        self.made = make_folders(self.final.parent)  # removed again by discard(), when nothing else went in
        self.claim = FolderClaim(self.final.parent, shared=True)  # released on commit() or discard()
        self.tmp = temp_path(self.final)
        self.verify = verify
        self.committed = False

    def commit(self, verify: bool = True) -> Path:
        """Verify (unless already done: verify=False), fsync and rename into place. Raises OutputError (and
        removes the temp) if any step fails."""
        with self.discarded_on_failure():
            if not self.tmp.is_file():
                raise OutputError(f"{self.final}: nothing was written (no temporary file {self.tmp.name})")
            if verify and self.verify is not None:
                self.verify(self.tmp)
            _fsync_path(self.tmp)
            os.replace(self.tmp, self.final)
            for s in SIDE_FILES:
                Path(f"{self.tmp}{s}").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the rename still happened
                _fsync_path(self.final.parent, directory=True)
        self.committed = True
        self.claim.release()
        return self.final

    @contextlib.contextmanager
    def discarded_on_failure(self) -> Iterator[None]:
        """On any exception (KeyboardInterrupt included) remove the temp; OS errors (a full disk) become one line."""
        try:
            yield
        except OSError as e:
            self.discard()
            raise OutputError(f"cannot write {self.final}: {e.strerror or e}; nothing was replaced") from e
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        remove_temp(self.tmp)
        self.claim.release()
        remove_empty_folders(self.made)


@contextlib.contextmanager
def atomic_output(final: str | Path, verify: Verifier | None = None) -> Iterator[Path]:
    """Yield a temporary path to write `final` into; on success verify, fsync and rename it into place.

    On any exception (KeyboardInterrupt included) the temporary file and its side files are removed and an
    existing `final` is left as it was. `verify(tmp)` raises if the file is incomplete (see `verify_raster`,
    `verify_geopackage`, `verify_json`). Disk-full and other OS errors become one-line OutputErrors.
    """
    out = PendingOutput(final, verify)
    with out.discarded_on_failure():
        yield out.tmp
    out.commit()


def write_text_atomic(final: str | Path, text: str, verify: Verifier | None = None) -> Path:
    """Write ``text`` to ``final`` through a temporary file, verified and renamed into place."""
    with atomic_output(final, verify) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
    return Path(final)


def write_json_atomic(final: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write `data` as JSON, verified by reading it back, then renamed into place."""
    return write_text_atomic(final, json.dumps(data, indent=indent, default=str) + "\n", verify=verify_json)


# --- verification: a write is complete only once it reads back --------------------------------------------


def verify_json(path: Path) -> None:
    """Read ``path`` back as JSON; OutputError if it does not parse (a full disk truncates silently)."""
    try:
        json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise OutputError(f"{path} did not read back as JSON ({e}); the disk may be full") from e


def verify_geopackage(path: Path) -> None:
    """SQLite's quick_check on the finished file: a truncated or torn GeoPackage fails it."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as e:
        raise OutputError(f"{path} is not a complete GeoPackage ({e}); the disk may be full") from e
    if rows != [("ok",)]:
        raise OutputError(f"{path} failed SQLite's integrity check ({rows[0][0]}); the disk may be full")


def verify_raster(path: Path, width: int | None = None, height: int | None = None, count: int | None = None) -> None:
    """A GeoTIFF is complete: it opens with the expected shape, every tile of every band and overview lies
    inside the file, and the last block of each level decodes. GDAL only warns on some failed writes."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    size = os.path.getsize(path)
    try:
        with rasterio.Env(), rasterio.open(path) as src:
            got = (src.width, src.height, src.count)
            want = (width or src.width, height or src.height, count or src.count)
            if got != want:
                raise OutputError(f"{path} is {got[0]}x{got[1]}x{got[2]}, expected {want[0]}x{want[1]}x{want[2]}")
            levels = [None, *range(len(src.overviews(1)))]
        for level in levels:
            with rasterio.open(path, overview_level=level) if level is not None else rasterio.open(path) as src:
                _check_blocks_inside(src, size, path)
                bh, bw = src.block_shapes[0]
                win = Window(max(0, src.width - bw), max(0, src.height - bh), min(bw, src.width), min(bh, src.height))
                src.read(window=win)
    except (RasterioError, OSError) as e:
        raise OutputError(f"{path} is incomplete: {str(e).splitlines()[0]}; the disk may be full") from e


def _check_blocks_inside(src, size: int, path: Path) -> None:
    if src.driver != "GTiff":
        return
    bh, bw = src.block_shapes[0]
    bands = [1] if src.interleaving and src.interleaving.name == "PIXEL" else range(1, src.count + 1)
    for b in bands:
        for y in range((src.height + bh - 1) // bh):
            for x in range((src.width + bw - 1) // bw):
                off = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=b)
                n = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=b)
                if off is None or n is None:
                    return  # not exposed by this GDAL: the read-back below still checks
                if int(off) + int(n) > size:
                    raise OutputError(
                        f"{path} is truncated: block {x},{y} of band {b} ends at byte {int(off) + int(n)}, the file "
                        f"has {size}; "
                        "the disk may be full"
                    )


# --- checking output paths before any work ------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_paths(
    inputs: dict[str, str | Path | None], outputs: dict[str, str | Path | None], kinds: dict[str, str] | None = None
) -> None:
    """Refuse, before any work, outputs that would destroy an input, each other, or something that is not a file.

    inputs and outputs map a name for messages (a flag such as "--out") to a path; None paths are skipped.
    kinds maps an output name to what it is ("gpkg", "tif"), so a GeoPackage aimed at a `.shp` name is refused.
    Each output must be a new path or an existing regular file, in a folder that exists (or can be made) and
    can be written. Raises OutputError naming the flag.
    """
    kinds = kinds or {}
    seen: dict[Path, str] = {}
    real_inputs = {name: Path(p) for name, p in inputs.items() if p is not None and _is_local(str(p))}
    for name, value in outputs.items():
        if value is None:
            continue
        out = Path(value)
        resolved = out.resolve()
        for in_name, inp in real_inputs.items():
            if resolved == inp.resolve() or _same_file(out, inp):
                raise OutputError(f"{name} {out} is the input {in_name} {inp}; choose another output path")
        if resolved in seen:
            raise OutputError(f"{name} {out} is the same path as {seen[resolved]}; give each output its own path")
        seen[resolved] = name
        if out.is_symlink() or out.exists():
            st = os.stat(out)
            if stat.S_ISDIR(st.st_mode):
                raise OutputError(
                    f"{name} {out} is an existing folder; give a file name, e.g. {out / 'buildings.gpkg'}"
                )
            if not stat.S_ISREG(st.st_mode):
                raise OutputError(
                    f"{name} {out} exists and is not a regular file (a device, pipe or socket); choose a file path"
                )
        kind = kinds.get(name)
        refused = VECTOR_SUFFIXES_REFUSED.get(out.suffix.lower())
        if kind == "gpkg" and out.suffix.lower() != ".gpkg":
            if refused:
                raise OutputError(
                    f"{name} {out}: fpn-geo writes a GeoPackage, not {refused}; name it {out.with_suffix('.gpkg').name}"
                )
            raise OutputError(f"{name} {out} must end in .gpkg (fpn-geo writes a GeoPackage)")
        if kind == "tif" and out.suffix.lower() not in (".tif", ".tiff"):
            raise OutputError(f"{name} {out} must end in .tif (a Cloud-Optimized GeoTIFF)")
        check_folder_writable(out, name)


def check_folder_writable(final: Path, name: str = "output") -> None:
    """The folder of `final` takes a file, or can be made: its nearest existing ancestor is a folder that takes a
    file (root ignores permission bits, so try it). Nothing is made here: a run refused later, for another
    reason, leaves no empty folders behind; `PendingOutput` makes them when it writes."""
    parent = final.parent
    base = nearest_existing(parent)
    if not base.is_dir():
        raise OutputError(f"{name}: folder {parent} cannot be created: {base} is not a folder")
    probe = base / temp_path(final).name
    try:
        probe.touch()
    except OSError as e:
        where = f"folder {parent} cannot be written" if base == parent else f"folder {parent} cannot be made in {base}"
        raise OutputError(f"{name}: {where} ({e.strerror or e})") from e
    finally:
        with contextlib.suppress(OSError):  # a read-only filesystem refuses even the unlink of a missing file
            probe.unlink()


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (a dangling link counts: making a folder there fails)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; returns those made, outermost first. OutputError if it cannot."""
    missing: list[Path] = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        missing.insert(0, p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"folder {folder} cannot be created ({e.strerror or e}); it or a parent is not a folder"
        ) from e
    return missing


def remove_empty_folders(made: list[Path]) -> None:
    """Remove the folders `make_folders` made, innermost first, as long as they are empty (another run may be
    writing there)."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            return


def _is_local(path: str) -> bool:
    return not (path.startswith("/vsi") or "://" in path)


# --- leftovers of killed runs ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderClaim:
    """A lock (flock) on a folder that says "an fpn-geo run is writing temporary files here".

    Runs hold it shared while they write (`PendingOutput`, `scratch_space`); a sweep asks for it exclusive,
    without waiting, and sweeps while it has it. The kernel drops a killed process's lock, so a sweep that gets
    it alone knows every temp of a dead pid there is left over, however young. Never raises: a folder that
    cannot be opened or a filesystem without flock (some network ones) just gives no claim (`alone` False).
    """

    def __init__(self, folder: str | Path, shared: bool = False) -> None:
        self.fd: int | None = None
        self.alone = False
        if fcntl is None:
            return
        try:
            self.fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        if shared:
            self.share()
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.alone = True
        except OSError:
            pass

    def share(self, wait_s: float = 2.0) -> None:
        """Hold the folder shared: from exclusive once a sweep is over, or after another run's sweep (which holds
        it exclusive for a moment). Not got within `wait_s`: the run goes on unclaimed, as on a filesystem
        without flock, and sweeps elsewhere keep the minute's rule for its temps."""
        if self.fd is None or fcntl is None:
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            except OSError:
                break
        log.debug("no shared lock on the output folder; a sweep elsewhere waits a minute for this run's temps")

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def _swept(folder: str | Path, sweep: Callable[..., list[Path]]) -> Iterator[list[Path]]:
    """Sweep `folder` holding its claim exclusive when no run holds it, then hold it shared until the block ends."""
    claim = FolderClaim(folder)
    try:
        removed = sweep(folder, alone=claim.alone)
        claim.share()
        yield removed
    finally:
        claim.release()


def _ours_and_stale(
    folder: str | Path, pattern: re.Pattern, now: float | None, is_kind, alone: bool = False
) -> Iterator[os.DirEntry]:
    """Entries of `folder` named by `pattern` (with a `pid` group), of the right kind, that a dead process left
    over a minute ago (at any age when `alone`: no run holds the folder's claim), or that no one touched for a
    week. Never raises: a sweep must not fail a run."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if not m:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not is_kind(st.st_mode):
                continue
            age, pid = now - st.st_mtime, int(m["pid"])
            dead = pid != os.getpid() and not _pid_alive(pid)
            if age > ABANDONED_AFTER_S or (dead and (alone or age > STALE_AFTER_S)):
                yield entry
        except OSError:
            continue


def sweep_stale_temps(folder: str | Path, now: float | None = None, alone: bool = False) -> list[Path]:
    """Remove fpn-geo temporary files in `folder` that a killed run left; returns what was removed.

    Only files named by `temp_path` are touched, and only when their process is gone (and the file is over a
    minute old, unless `alone`: the caller holds the folder's claim alone) or the file has not changed for a week.
    """
    removed: list[Path] = []
    for entry in _ours_and_stale(folder, TEMP_RE, now, stat.S_ISREG, alone):
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def sweep_output_folders(paths: Iterable[str | Path | None]) -> list[Path]:
    """`sweep_stale_temps` on the folder of each output path (each folder once), under its claim (`FolderClaim`)."""
    removed: list[Path] = []
    for folder in dict.fromkeys(Path(p).parent for p in paths if p is not None):
        with _swept(folder, sweep_stale_temps) as gone:
            removed += gone
    return removed


# --- a scene's outputs: checked once --------------------------------------------------------------------------


def default_probability_path(out: Path) -> Path:
    """Where the probability COG goes by default: NAME.probability.tif beside NAME.gpkg."""
    return out.with_name(out.stem + ".probability.tif")


@dataclass(frozen=True)
class SceneOutputs:
    """A scene's GeoPackage and probability COG (None when none is written), checked and their folders swept.
    Only `scene_outputs` makes one, so whoever holds it (`SceneWriter`) need not check the paths again."""

    out: Path
    probability: Path | None


def scene_outputs(
    inputs: dict[str, str | Path | None], out: str | Path, probability: str | Path | None, want_cog: bool,
    names: tuple[str, str] = ("out", "probability"),
) -> SceneOutputs:
    """The one check of a scene's output paths, before any work: `check_output_paths` against `inputs`, then
    `sweep_output_folders`. `probability`: the COG's path, by default beside `out` (`default_probability_path`),
    when `want_cog`. `names`: how messages call the two (the CLI's "--out" and "--probability")."""
    gpkg = Path(out)
    cog = (Path(probability) if probability else default_probability_path(gpkg)) if want_cog else None
    check_output_paths(inputs, {names[0]: gpkg, names[1]: cog}, kinds={names[0]: "gpkg", names[1]: "tif"})
    sweep_output_folders([gpkg, cog])
    return SceneOutputs(gpkg, cog)


# --- scratch space ----------------------------------------------------------------------------------------------


def scratch_folder(scratch_dir: str | Path | None) -> Path:
    """The folder for scratch files: the config's `scratch_dir`, else the system temp folder."""
    import tempfile

    if scratch_dir is None:
        return Path(tempfile.gettempdir())
    d = Path(scratch_dir)
    if not d.is_dir():
        raise OutputError(f"scratch_dir {d} is not a folder; create it or set scratch_dir to an existing folder")
    return d


def free_bytes(folder: str | Path) -> int | None:
    """The space an unprivileged writer has left in `folder`'s file system; None where it cannot be asked."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_scratch_space(scratch_dir: str | Path | None, need_bytes: int, what: str = "scratch files") -> Path:
    """Fail before any work when the scratch folder cannot hold `need_bytes` (plus 5 %); returns the folder."""
    folder = scratch_folder(scratch_dir)
    free = free_bytes(folder)
    if free is None:
        return folder
    need = int(need_bytes * 1.05)
    if need > free:
        raise OutputError(
            f"{what} needs about {need / 1e9:.2f} GB in {folder}, which has {free / 1e9:.2f} GB free; "
            "set scratch_dir (config) to a folder with more space"
        )
    return folder


SCRATCH_RE = re.compile(r"^fpn-geo-(?P<pid>\d+)-[A-Za-z0-9_]+$")


@contextlib.contextmanager
def scratch_space(scratch_dir: str | Path | None = None) -> Iterator[Path]:
    """A private scratch folder (`fpn-geo-PID-RANDOM` in `scratch_dir` or the system temp folder), removed when
    the block ends however it ends; what a SIGKILLed run left is removed by `sweep_stale_scratch` (called here)."""
    import shutil
    import tempfile

    parent = scratch_folder(scratch_dir)
    with _swept(parent, sweep_stale_scratch):  # the claim is held, shared, while the scratch folder lives
        path = Path(tempfile.mkdtemp(prefix=f"fpn-geo-{os.getpid()}-", dir=parent))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def sweep_stale_scratch(folder: str | Path, now: float | None = None, alone: bool = False) -> list[Path]:
    """Remove `fpn-geo-PID-*` scratch folders whose process is gone (and that are over a minute old, unless
    `alone`: the caller holds the folder's claim alone)."""
    import shutil

    removed: list[Path] = []
    for entry in _ours_and_stale(folder, SCRATCH_RE, now, stat.S_ISDIR, alone):
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed

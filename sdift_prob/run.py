"""Run directories: one folder per fitted pipeline, described by a checksummed manifest.

Layout::

    RUN_DIR/
      manifest.json    {"sdift_run_format": 1, "created": ..., "versions": {...},
                        "sections": {"ftm": {"info": {...}, "files": {"ftm.eqx": SHA-256, ...},
                                             "versions": {...}, "written": ...}, ...},
                        "manifest_sha256": SHA-256 of the rest (canonical JSON)}
      ftm.eqx, cores.npz, prior.eqx, ...

Each stage owns a section (e.g. `"ftm"`, `"prior"`) with its own info dict and files. Every
file is written to a temporary name and renamed into place; the manifest, rewritten last
(atomically), records the SHA-256 of each file and its own, and `read_manifest` checks them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .errors import FormatError, bad_input
from .io import atomic_dir, atomic_file

RUN_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PACKAGES = ("sdift-prob", "jax", "equinox", "numpyro", "optax")
_SECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run's files."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


DIGEST_KEY = "manifest_sha256"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON, leaving out its own `manifest_sha256` entry."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def _manifest_text(manifest: dict[str, Any]) -> str:
    sealed = {**manifest, DIGEST_KEY: manifest_digest(manifest)}
    return json.dumps(sealed, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    text = _manifest_text(manifest).rstrip("\n")
    with atomic_file(run_dir / MANIFEST, overwrite=True) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def _check_new_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise bad_input("run_dir", "a path that does not exist yet (or overwrite=True / --overwrite)", str(target))
    if target.exists() and not target.is_dir():
        raise bad_input("run_dir", "a folder (an existing file is never replaced by a run)", str(target))


@contextlib.contextmanager
def new_run(run_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a run in a temporary folder that replaces `run_dir` in one rename on success.

    Yields the temporary run directory (already holding its manifest), to fill with
    `add_artifact`. If the block raises, nothing at `run_dir` changes.

    **Arguments:**

    - `run_dir`: the folder to create; its parent must exist.
    - `overwrite`: replace an existing folder (moved aside only once the new one is ready).
    """
    target = Path(run_dir)
    _check_new_target(target, overwrite)
    manifest = {"sdift_run_format": RUN_FORMAT_VERSION, "created": _now(), "versions": package_versions(), "sections": {}}
    with atomic_dir(target, overwrite=overwrite, argument="run_dir") as tmp:
        (tmp / MANIFEST).write_text(_manifest_text(manifest), encoding="utf-8")
        yield tmp


def create_run(run_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Create an empty run directory holding only its manifest.

    **Arguments:**

    - `run_dir`: the folder to create; its parent must exist.
    - `overwrite`: replace an existing folder (in one rename, after the new one is ready).

    **Returns:** the run directory's path.
    """
    with new_run(run_dir, overwrite=overwrite):
        pass
    return Path(run_dir)


def _load_manifest_json(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise bad_input("run_dir", "an existing run directory", str(run_dir))
    path = run_dir / MANIFEST
    if not path.is_file():
        raise FormatError(f"{run_dir}: not a run directory ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: corrupt manifest (not valid JSON: {exc})") from exc
    if not isinstance(manifest, dict) or "sdift_run_format" not in manifest:
        raise FormatError(f"{path}: not an sdift run manifest (no 'sdift_run_format' entry)")
    found = manifest["sdift_run_format"]
    if found != RUN_FORMAT_VERSION:
        raise FormatError(
            f"{path}: run format version {found!r} is not supported; this version of sdift-prob "
            f"reads format {RUN_FORMAT_VERSION} (written by sdift-prob "
            f"{manifest.get('versions', {}).get('sdift-prob', '?') if isinstance(manifest.get('versions'), dict) else '?'})"
        )
    sections = manifest.get("sections")
    if not isinstance(sections, dict):
        raise FormatError(f"{path}: corrupt manifest ('sections' is not a mapping)")
    for name, sec in sections.items():
        if (
            not isinstance(sec, dict)
            or not isinstance(sec.get("files"), dict)
            or not isinstance(sec.get("info"), dict)
            or not all(isinstance(v, str) for v in sec["files"].values())
        ):
            raise FormatError(f"{path}: corrupt manifest (section {name!r} lacks 'info' or 'files')")
        for fname in sec["files"]:
            if not _plain_name(fname):
                raise FormatError(f"{path}: corrupt manifest (section {name!r} lists {fname!r}, not a plain file name)")
    return manifest


def _plain_name(fname: object) -> bool:
    return (
        isinstance(fname, str) and bool(fname) and fname not in (MANIFEST, ".", "..") and not fname.startswith(".")
        and "/" not in fname and "\\" not in fname
    )


def _verify_digest(manifest: dict[str, Any], path: Path) -> None:
    """Every manifest carries the checksum of its own canonical JSON; one without it is refused
    (manifests written before it existed are sealed once with `seal_run` / `sdift seal`)."""
    if DIGEST_KEY not in manifest:
        versions = manifest.get("versions")
        writer = versions.get("sdift-prob", "?") if isinstance(versions, dict) else "?"
        raise FormatError(
            f"{path}: the manifest has no {DIGEST_KEY} (its own checksum; written by sdift-prob {writer} "
            "before manifests were sealed, or the entry was removed), so a hand edit could not be detected; "
            f"if you trust this run, seal it once with `sdift seal {path.parent}` "
            "(or sdift_prob.run.seal_run(run_dir))"
        )
    try:
        expected = manifest_digest(manifest)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: corrupt manifest (not canonical JSON: {exc})") from exc
    if manifest[DIGEST_KEY] != expected:
        raise FormatError(
            f"{path}: the manifest was changed after it was written (its own SHA-256 does not match); "
            "it must not be edited by hand; restore it or rebuild the run"
        )


def _verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists and has its recorded SHA-256."""
    for name, sec in manifest["sections"].items():
        for fname, digest in sec["files"].items():
            path = root / fname
            if not path.is_file():
                raise FormatError(f"{root}: file {fname!r} of section {name!r} is missing")
            actual = sha256_file(path)
            if actual != digest:
                raise FormatError(
                    f"{path}: checksum mismatch (section {name!r}): the file was changed or corrupted "
                    f"after it was written (SHA-256 {actual[:12]}... instead of {digest[:12]}...)"
                )


def read_manifest(run_dir: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read (and by default verify) a run directory's manifest.

    **Arguments:**

    - `run_dir`: the run directory.
    - `verify`: check the manifest's own SHA-256 (`manifest_sha256`; a manifest without it is
      refused: see `seal_run`) and that every file listed exists and has the recorded SHA-256.

    **Returns:** the manifest as a dict. Raises `FormatError` for a missing, corrupt, unsealed
    or hand-edited manifest, an unsupported format version, or a missing or altered file (named).
    """
    root = Path(run_dir)
    manifest = _load_manifest_json(root)
    if verify:
        _verify_digest(manifest, root / MANIFEST)
        _verify_files(root, manifest)
    return manifest


def seal_run(run_dir: str | os.PathLike) -> str:
    """Add its own checksum (`manifest_sha256`) to the manifest of a run written before
    manifests were sealed (`sdift seal RUN_DIR` on the command line).

    Every file the manifest lists must exist with its recorded SHA-256 first. A manifest that
    already has a checksum is left as it is when the checksum matches, and refused when it does
    not (it was edited after it was written: sealing must not bless the edit). Only the
    `manifest_sha256` entry is added; the manifest is rewritten atomically.

    **Arguments:**

    - `run_dir`: the run directory.

    **Returns:** the manifest's SHA-256.
    """
    root = Path(run_dir)
    path = root / MANIFEST
    manifest = _load_manifest_json(root)
    if DIGEST_KEY in manifest:
        _verify_digest(manifest, path)
        _verify_files(root, manifest)
        return str(manifest[DIGEST_KEY])
    _verify_files(root, manifest)
    try:
        digest = manifest_digest(manifest)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: corrupt manifest (not canonical JSON: {exc})") from exc
    _write_manifest(root, manifest)
    return digest


def _check_section_name(section: object) -> str:
    if not isinstance(section, str) or not _SECTION_RE.match(section):
        raise bad_input("section", "a name of letters, digits, '_', '.', '-'", section)
    return section


def add_artifact(
    run_dir: str | os.PathLike,
    section: str,
    files: Mapping[str, Callable[[Path], None]],
    info: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write a section's files into a run directory and record them in the manifest.

    Every writer is called with a temporary path beside its target and must write the whole
    file to exactly that path (open it; do not let a library add a suffix). Only when all
    writers succeed are the files renamed into place; the manifest is rewritten last.

    **Arguments:**

    - `run_dir`: an existing run directory (see `create_run`).
    - `section`: the section name, e.g. `"ftm"` or `"prior"`.
    - `files`: file name (no folders) -> writer `(path) -> None`.
    - `info`: JSON-serialisable description of the section (config, statistics, ...).
    - `overwrite`: replace an existing section (its old files not rewritten are removed).

    **Returns:** file name -> SHA-256 of what was written.
    """
    root = Path(run_dir)
    section = _check_section_name(section)
    manifest = read_manifest(root, verify=True)
    sections = manifest["sections"]
    if section in sections and not overwrite:
        raise bad_input("section", f"a section not yet in {root} (or overwrite=True)", section)
    if not isinstance(files, Mapping) or not files:
        raise bad_input("files", "a non-empty mapping file name -> writer", files)
    owned = {f: s for s, sec in sections.items() if s != section for f in sec["files"]}
    for fname, writer in files.items():
        if not _plain_name(fname):
            raise bad_input("files", f"plain file names other than {MANIFEST!r} (no folders, no leading '.')", fname)
        if fname in owned:
            raise bad_input("files", f"file names not owned by another section ({fname!r} belongs to {owned[fname]!r})", fname)
        if not callable(writer):
            raise bad_input(f"files[{fname!r}]", "a callable writer(path)", writer)
    if not isinstance(info, Mapping):
        raise bad_input("info", "a JSON-serialisable mapping", info)
    try:
        info_clean = json.loads(json.dumps(dict(info), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise bad_input("info", "JSON-serialisable values (no NaN/inf, no arrays)", str(exc)) from exc

    digests: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for fname, writer in files.items():
            tmp = stack.enter_context(atomic_file(root / fname, overwrite=True))
            writer(tmp)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise bad_input(f"files[{fname!r}]", "a writer that writes the file to the path it is given", "nothing written")
            digests[fname] = sha256_file(tmp)
    old_files = set(sections.get(section, {}).get("files", {})) - set(digests)
    sections[section] = {"info": info_clean, "files": digests, "versions": package_versions(), "written": _now()}
    _write_manifest(root, manifest)
    for fname in old_files:
        with contextlib.suppress(FileNotFoundError):
            (root / fname).unlink()
    return digests


def section_info(run_dir: str | os.PathLike, section: str, *, verify: bool = True) -> dict[str, Any]:
    """The info dict of one section (FormatError if the run has no such section)."""
    section = _check_section_name(section)
    manifest = read_manifest(run_dir, verify=verify)
    if section not in manifest["sections"]:
        raise FormatError(
            f"{run_dir}: the run has no {section!r} section (sections present: {sorted(manifest['sections'])})"
        )
    return manifest["sections"][section]["info"]


def section_files(run_dir: str | os.PathLike, section: str, *, verify: bool = True) -> dict[str, Path]:
    """File name -> path of the files of one section (checksums verified by default)."""
    section = _check_section_name(section)
    manifest = read_manifest(run_dir, verify=verify)
    if section not in manifest["sections"]:
        raise FormatError(
            f"{run_dir}: the run has no {section!r} section (sections present: {sorted(manifest['sections'])})"
        )
    return {f: Path(run_dir) / f for f in manifest["sections"][section]["files"]}

"""Carrying a guest image between machines: `shuru image export FILE` / `shuru image import
FILE`. The use: an arm64 image built on Linux (`shuru init --arch arm64`, which needs root,
mmdebstrap and qemu-user-static) carried to a Mac, where none of those are at hand.

The tarball (gzip) holds exactly `manifest.json` first, then the image's files (`FILES`),
each a plain regular file at the top level. The manifest already records every file's sha256
and size and the image id derived from them, so it is the checksum list.

Import trusts nothing in the tarball: it never extracts by member path (no absolute paths,
no `..`, no links or devices; a member must be exactly one of the names above, once), it
reads the manifest first and checks it, then streams each file into a private build dir
while hashing it, and refuses the whole import, naming the tarball and the member, when a
file is missing, extra, of another size or hash (a tampered or truncated tarball). Only a
fully verified image is moved into place (`shuru.build.install`, under the build lock), and
it becomes the current image of its architecture.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import HostError, ImageError
from .store import (ARCHES, FILES, FORMAT, Image, current_image, image_id, images_dir, load,
                    make_images_dir, verify)

MANIFEST = "manifest.json"
MEMBERS = (MANIFEST, *FILES)
MANIFEST_MAX = 1 << 20  # a manifest is a few KiB; refuse to buffer a huge "manifest"
CHUNK = 1 << 20
HOLE = 64 << 10  # an all-zero block of this size is left as a hole
# gzip level 1: the root filesystem is mostly zeros and already-compressed packages, so
# higher levels cost several times the CPU for a few percent.
COMPRESSLEVEL = 1


# ---- pure checks ----------------------------------------------------------------------------


def member_problem(member: tarfile.TarInfo, seen: set[str]) -> str | None:
    """Why a tarball member is not acceptable (None if it is): only the known names, each
    once, as regular files, manifest first."""
    name = member.name
    if name not in MEMBERS:
        return f"unexpected member {name!r} (an image tarball holds only {', '.join(MEMBERS)})"
    if not member.isreg():
        return f"member {name!r} is not a regular file"
    if name in seen:
        return f"member {name!r} appears twice"
    if not seen and name != MANIFEST:
        return f"member {name!r} comes before {MANIFEST}"
    return None


def manifest_problems(manifest: object) -> list[str]:
    """What is wrong with an imported manifest (empty if nothing): its format, arch and the
    files' sha256s and sizes, and the image id they must hash to."""
    if not isinstance(manifest, dict):
        return [f"{MANIFEST} is not a JSON object"]
    problems = []
    if manifest.get("format") != FORMAT:
        problems.append(f"{MANIFEST} has format {manifest.get('format')!r}; this version of "
                        f"shuru reads format {FORMAT}")
    if manifest.get("arch") not in ARCHES:
        problems.append(f"{MANIFEST} has arch {manifest.get('arch')!r}; expected one of "
                        + ", ".join(ARCHES))
    files = manifest.get("files")
    if not isinstance(files, dict):
        return [*problems, f"{MANIFEST} has no files table"]
    hashes = {}
    for name in FILES:
        entry = files.get(name)
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not (isinstance(sha, str) and len(sha) == 64
                and all(c in "0123456789abcdef" for c in sha)):
            problems.append(f"{MANIFEST} has no valid sha256 for {name}")
        elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(f"{MANIFEST} has no valid size for {name}")
        else:
            hashes[name] = sha
    if not problems and image_id(hashes) != manifest.get("image_id"):
        problems.append(f"{MANIFEST}'s image_id {manifest.get('image_id')!r} does not match "
                        f"its files' sha256s")
    return problems


# ---- export ---------------------------------------------------------------------------------


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, mtime, tarfile.REGTYPE
    return info


def export_image(dest: Path, *, arch: str | None = None, home: Path | None = None) -> Image:
    """Write the current image of `arch` (default: the host's) to `dest` as a gzip tarball,
    after checking every file against its manifest. `dest` appears complete or not at all."""
    image = current_image(home, arch)
    verify(image, full=True)
    dest = Path(dest)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent or ".")
    except OSError as e:
        raise HostError(f"cannot write {dest}: {e.strerror}") from None
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a plain `open` would: mkstemp's is 0600
        with os.fdopen(fd, "wb") as raw, \
                tarfile.open(fileobj=raw, mode="w:gz", compresslevel=COMPRESSLEVEL,
                             format=tarfile.PAX_FORMAT) as tar:
            manifest = (image.path / MANIFEST).read_bytes()
            mtime = int((image.path / MANIFEST).stat().st_mtime)
            tar.addfile(_info(MANIFEST, len(manifest), mtime), io.BytesIO(manifest))
            for name in FILES:
                path = image.path / name
                with open(path, "rb") as f:
                    tar.addfile(_info(name, os.fstat(f.fileno()).st_size, mtime), f)
        os.replace(tmp, dest)
    except OSError as e:
        raise HostError(f"cannot write {dest}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return image


# ---- import ---------------------------------------------------------------------------------


def _copy_sparse(src, dest: Path, size: int) -> str:
    """Copy `size` bytes from `src` to a new file `dest`, leaving holes for all-zero blocks
    (a root filesystem is mostly empty); return the sha256 of what was read. A read error
    (the tarball's) propagates as it is; a write error (ours: a full disk) is a HostError."""
    h = hashlib.sha256()
    zero = bytes(HOLE)
    left = size
    try:
        out = open(dest, "wb")
    except OSError as e:
        raise HostError(f"cannot write {dest}: {e.strerror}") from None
    with out:
        while left:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise EOFError("unexpected end of data")
            h.update(chunk)
            left -= len(chunk)
            view = memoryview(chunk)
            try:
                for at in range(0, len(chunk), HOLE):
                    block = view[at:at + HOLE]
                    if block == zero[:len(block)]:
                        out.seek(len(block), os.SEEK_CUR)
                    else:
                        out.write(block)
            except OSError as e:
                raise HostError(f"cannot write {dest}: {e.strerror}") from None
        try:
            out.truncate(size)
        except OSError as e:
            raise HostError(f"cannot write {dest}: {e.strerror}") from None
    return h.hexdigest()


# What reading a cut or corrupted gzip tarball raises, besides tarfile's own errors.
READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _read_verified(src: Path, out: Path) -> dict:
    """Stream the tarball's members into `out`, checking each; return the manifest. A read
    error names the member being read (or the last one read, for a damaged header)."""
    seen: list[str] = []
    try:
        with tarfile.open(src, mode="r|*") as tar:
            return _read_members(tar, src, out, seen)
    except FileNotFoundError:
        raise ImageError(f"{src}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{src} is a directory, not an image tarball") from None
    except READ_ERRORS as e:
        detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
        where = (f"member {seen[-1]} is cut short or damaged" if seen
                 else "it is not a gzip or tar file, or its first member is damaged")
        raise ImageError(f"{src}: {where} ({detail}); refusing to import it") from None


def _read_members(tar: tarfile.TarFile, src: Path, out: Path, seen: list[str]) -> dict:
    manifest: dict = {}
    for member in tar:
        problem = member_problem(member, set(seen))
        if problem:
            raise ImageError(f"{src}: {problem}; refusing to import it")
        seen.append(member.name)
        data = tar.extractfile(member)
        if data is None:  # member_problem admits regular files only
            raise ImageError(f"{src}: member {member.name} is not a regular file")
        if member.name == MANIFEST:
            if member.size > MANIFEST_MAX:
                raise ImageError(f"{src}: member {MANIFEST} is {member.size} bytes, "
                                 f"too large for a manifest")
            try:
                manifest = json.loads(data.read())
            except ValueError as e:
                raise ImageError(f"{src}: member {MANIFEST} is not valid JSON: {e}") from None
            problems = manifest_problems(manifest)
            if problems:
                raise ImageError(f"{src}: member {MANIFEST}: " + "; ".join(problems))
            continue
        want = manifest["files"][member.name]
        if member.size != want["size"]:
            raise ImageError(f"{src}: member {member.name} has {member.size} bytes, the "
                             f"manifest says {want['size']}; refusing to import it")
        digest = _copy_sparse(data, out / member.name, member.size)
        if digest != want["sha256"]:
            raise ImageError(f"{src}: member {member.name} does not match the sha256 in its "
                             f"manifest (the file was altered or damaged); refusing to "
                             f"import it")
    missing = [name for name in MEMBERS if name not in seen]
    if missing:
        raise ImageError(f"{src}: member {missing[0]} is missing (the file is truncated or "
                         f"not an image tarball)")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def import_image(src: Path, *, home: Path | None = None) -> Image:
    """Install the image in tarball `src` (written by `export_image`) after verifying every
    file, and make it the current image of its architecture."""
    from .build import _build_lock, _no_progress, install, remove_tree

    src = Path(src)
    images = make_images_dir(home)
    with _build_lock(images, _no_progress):
        # `.build-` so that a later build, holding the same lock, clears one left by a crash.
        work = Path(tempfile.mkdtemp(prefix=".build-import-", dir=images))
        try:
            out = work / "out"
            out.mkdir()
            _read_verified(src, out)
            final = install(out, images)
        finally:
            with contextlib.suppress(ImageError, OSError):
                remove_tree(work)
    image = load(final)
    verify(image)
    return image

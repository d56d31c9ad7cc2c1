"""fetch(): pinned and trust-on-first-use downloads against an HTTP server on 127.0.0.1, resumed
transfers, the mirror variable, the fallback URL, concurrent processes, and her2st downloaded
through the registry exactly as a user would. (Misbehaving servers and broken files are in
tests/test_bad_input_download.py.)"""
from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import textwrap
import threading

import dlserver
import numpy as np
import pytest
from localhttp import serve

from spared_lib.data import FIXTURES, build_mirror, fixture_dataset, get_dataset, load_dataset
from spared_lib.data.download import MIRROR_ENV, fetch, hash_record, mirrored, sha256sum

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, so the transfer spans several chunks
GOOD = hashlib.sha256(PAYLOAD).hexdigest()
BIG = gzip.compress(np.random.default_rng(0).integers(0, 255, 3_000_000, dtype=np.uint8).tobytes(), 1)


@pytest.fixture()
def server():
    dlserver.reset()
    dlserver.FILES.update({"payload.bin": PAYLOAD, "big.tsv.gz": BIG})
    with serve(dlserver.Handler) as url:
        yield url


def visible(folder):
    """The files a user sees (lock files are hidden)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_good_file_verified_and_cached(server, tmp_path):
    dest = tmp_path / "cache" / "counts.h5"
    assert fetch(f"{server}/good/payload.bin", dest, GOOD, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and visible(dest.parent) == ["counts.h5"]
    # Cached: a second call needs no server (a dead URL) and returns the same file.
    assert fetch("http://127.0.0.1:9/nothing", dest, GOOD, progress=False) == dest


def test_uppercase_pin_keeps_a_good_cached_file(server, tmp_path):
    """Issue 15 §4: an uppercase sha256 made fetch delete a good cached file."""
    dest = tmp_path / "counts.h5"
    fetch(f"{server}/good/payload.bin", dest, GOOD, progress=False)
    mtime = dest.stat().st_mtime_ns
    assert fetch("http://127.0.0.1:9/offline", dest, GOOD.upper(), progress=False) == dest
    assert dest.stat().st_mtime_ns == mtime and dest.read_bytes() == PAYLOAD


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    dest = tmp_path / "image.tif"
    with pytest.raises(Exception, match="interrupted|incomplete"):
        fetch(f"{server}/cutonce/payload.bin", dest, GOOD, progress=False)
    part = tmp_path / "image.tif.part"
    have = part.stat().st_size
    assert 0 < have < len(PAYLOAD) and not dest.exists()
    fetch(f"{server}/cutonce/payload.bin", dest, GOOD, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert dlserver.hits[("good", "payload.bin", f"bytes={have}-")] == 0  # served under "cutonce"
    assert dlserver.hits[("cutonce", "payload.bin", f"bytes={have}-")] == 1
    assert visible(tmp_path) == ["image.tif"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "x.bin"
    (tmp_path / "x.bin.part").write_bytes(PAYLOAD[:1000])
    fetch(f"{server}/norange/payload.bin", dest, GOOD, progress=False)
    assert dest.read_bytes() == PAYLOAD and visible(tmp_path) == ["x.bin"]


def test_416_on_a_complete_part_finishes_it(server, tmp_path):
    """Issue 15 §4: a complete .part answered with 416 failed forever."""
    dest = tmp_path / "x.bin"
    (tmp_path / "x.bin.part").write_bytes(PAYLOAD)
    fetch(f"{server}/always416/payload.bin", dest, GOOD, progress=False)
    assert dest.read_bytes() == PAYLOAD and visible(tmp_path) == ["x.bin"]
    assert dlserver.hits[("always416", "payload.bin", f"bytes={len(PAYLOAD)}-")] == 1


def test_unpinned_file_is_trusted_on_first_use(server, tmp_path):
    dest = tmp_path / "counts.tsv.gz"
    fetch(f"{server}/good/big.tsv.gz", dest, None, progress=False)
    record = hash_record(dest)
    assert record.read_text() == f"{hashlib.sha256(BIG).hexdigest()}  counts.tsv.gz\n"
    assert visible(tmp_path) == ["counts.tsv.gz", "counts.tsv.gz.sha256"]
    # Later uses check the record: a damaged copy is fetched again and must match the record.
    dest.write_bytes(BIG[:100] + bytes([BIG[100] ^ 1]) + BIG[101:])
    fetch(f"{server}/good/big.tsv.gz", dest, None, progress=False)
    assert dest.read_bytes() == BIG
    assert sum(n for (m, f, r), n in dlserver.hits.items() if f == "big.tsv.gz") == 2


def test_file_placed_by_hand_is_checked_and_recorded(tmp_path):
    dest = tmp_path / "counts.tsv.gz"
    dest.write_bytes(BIG)
    assert fetch("http://127.0.0.1:9/offline", dest, None, progress=False) == dest
    assert hash_record(dest).read_text().split()[0] == hashlib.sha256(BIG).hexdigest()


def test_mirror_variable_rewrites_every_registry_url(server, tmp_path, monkeypatch):
    url = "https://cf.10xgenomics.com/samples/spatial-exp/1.1.0/V1/V1_image.tif"
    assert mirrored(url) == url
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:8000/mirror/")
    assert mirrored(url) == "http://127.0.0.1:8000/mirror/cf.10xgenomics.com/samples/spatial-exp/1.1.0/V1/V1_image.tif"
    assert mirrored("file:///data/x.h5") == "file:///data/x.h5"
    # fetch goes to the mirror, never to the original host.
    dlserver.FILES["example.org/data/payload.bin"] = PAYLOAD
    monkeypatch.setenv(MIRROR_ENV, f"{server}/good")
    dest = tmp_path / "payload.bin"
    fetch("https://example.org/data/payload.bin", dest, GOOD, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert dict(dlserver.hits) == {("good", "example.org/data/payload.bin", None): 1}


def test_fallback_url_serves_when_the_primary_fails(server, tmp_path):
    dest = tmp_path / "x.bin"
    fetch(f"{server}/404/payload.bin", dest, GOOD, progress=False, fallback_url=f"{server}/good/payload.bin")
    assert dest.read_bytes() == PAYLOAD and visible(tmp_path) == ["x.bin"]


def test_tenx_pins_equal_squidpys_registry():
    """The 30 pinned sha256 of the 10x files are squidpy's (its datasets.yaml, read from the
    installed package), and squidpy's S3 mirror is each file's fallback URL."""
    import importlib.util
    from pathlib import Path

    import yaml

    # Read the file without importing squidpy (slow, and noisy with docrep warnings).
    package = Path(importlib.util.find_spec("squidpy").origin).parent
    config = yaml.safe_load((package / "datasets" / "datasets.yaml").read_text())
    squidpy = {f["s3_key"].rsplit("/", 1)[-1]: (f["sha256"], config["s3_base_url"] + f["s3_key"])
               for d in config["datasets"].values() for f in d.get("files", [])}
    tenx = [f for k in ("10xgenomic_human_brain", "10xgenomic_human_breast_cancer",
                        "10xgenomic_mouse_brain_coronal", "10xgenomic_mouse_brain_sagittal_anterior",
                        "10xgenomic_mouse_brain_sagittal_posterior") for f in get_dataset(k).files]
    assert len(tenx) == 30
    for f in tenx:
        sha, s3 = squidpy[f.url.rsplit("/", 1)[-1]]
        assert f.sha256 == sha and f.fallback_url == s3 and "squidpy" in f.sha256_source


# --------------------------------------------------------------------------- concurrency
_FETCH = textwrap.dedent("""
    import sys
    from spared_lib.data.download import fetch
    url, dest, sha = sys.argv[1], sys.argv[2], (sys.argv[3] if sys.argv[3] != "-" else None)
    fetch(url, dest, sha, progress=False)
""")


def _fetch_in_processes(n, url, dest, sha):
    procs = [subprocess.Popen([sys.executable, "-c", _FETCH, url, str(dest), sha or "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    out = [p.communicate(timeout=300) for p in procs]
    return [p.returncode for p in procs], [err for _, err in out]


@pytest.mark.parametrize("stale", ["none", "good-prefix", "garbage"])
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "trust-on-first-use"])
def test_concurrent_processes_fetching_one_file(server, tmp_path, stale, pinned):
    """Issue 15 §1: N processes fetching the same file (Ray trials, DDP ranks) give one correct
    file and N successes, with or without a stale .part left by an earlier interrupted run."""
    dest = tmp_path / "cache" / "big.tsv.gz"
    dest.parent.mkdir()
    part = dest.with_name(dest.name + ".part")
    if stale == "good-prefix":
        part.write_bytes(BIG[: len(BIG) // 3])
    elif stale == "garbage":
        part.write_bytes(b"\0" * (len(BIG) // 3))
    sha = hashlib.sha256(BIG).hexdigest() if pinned else None
    codes, errors = _fetch_in_processes(4, f"{server}/slow/big.tsv.gz", dest, sha)
    assert codes == [0] * 4, errors
    assert dest.read_bytes() == BIG
    assert visible(dest.parent) == (["big.tsv.gz"] if pinned else ["big.tsv.gz", "big.tsv.gz.sha256"])
    assert not list(dest.parent.glob("*.tmp")) and not list(dest.parent.glob(".*.tmp"))
    # One process downloaded; the other three found the verified copy.
    full = sum(n for (m, f, r), n in dlserver.hits.items() if r is None)
    ranged = sum(n for (m, f, r), n in dlserver.hits.items() if r is not None)
    if stale == "none":
        assert (full, ranged) == (1, 0)
    elif stale == "good-prefix":
        assert (full, ranged) == (0, 1)
    else:  # the garbage prefix fails the check once, then one clean download
        assert (full, ranged) == (1, 1)


# --------------------------------------------------------------------------- her2st via the registry
@pytest.fixture(scope="module")
def her2st_mirror(fixtures, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mirror")
    done = build_mirror(folder, fixtures)
    assert done["her2st"] == (59, 59) and all(found == listed for found, listed in done.values())
    assert set(done) == set(FIXTURES)
    from spared_lib.data.mirror import serve as serve_mirror

    httpd = serve_mirror(folder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_her2st_downloads_through_the_registry(her2st_mirror, tmp_path, monkeypatch):
    """load_dataset('her2st_C') from a loopback mirror of the public repository: the pinned files
    land in <data_dir>/her2st in the her2st layout and read exactly like the local fixture."""
    _, url = her2st_mirror
    monkeypatch.setenv(MIRROR_ENV, url)
    a = load_dataset("her2st_C", data_dir=tmp_path, load_images=False)
    b = load_dataset(fixture_dataset("her2st_C"), load_images=False)
    assert (a.X != b.X).nnz == 0 and a.obs["split"].tolist() == b.obs["split"].tolist()
    root = tmp_path / "her2st"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert files == sorted(f.target for f in get_dataset("her2st_C").files)  # pinned: no .sha256 records
    for f in get_dataset("her2st_C").files:
        assert sha256sum(root / f.target) == f.sha256
    # her2st_hne shares the folder: only its missing files are fetched (none for C2-C4 counts).
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # offline: everything must come from the cache
    assert load_dataset("her2st_hne", data_dir=tmp_path, load_images=False).n_obs == 551


def test_mirror_folder_works_without_a_server(her2st_mirror, tmp_path, monkeypatch):
    folder, _ = her2st_mirror
    monkeypatch.setenv(MIRROR_ENV, folder.as_uri())
    a = load_dataset("her2st_hne", data_dir=tmp_path)
    assert set(a.uns["spatial"]["C2"]["images"]) == {"hires", "lowres"}


def test_fixtures_folder_laid_out_from_public_sources(her2st_mirror, fixtures, tmp_path, monkeypatch):
    """`python -m spared_lib.data.fixtures fetch DEST` (the book workflow's step) rebuilds
    shared/data byte for byte from the pinned public files (here through a file:// mirror)."""
    from badinput import snapshot

    from spared_lib.data.fixtures import main

    folder, _ = her2st_mirror
    monkeypatch.setenv(MIRROR_ENV, folder.as_uri())
    dest = tmp_path / "shared_data"
    main(["fetch", str(dest), "--quiet"])
    mine = {k: v for k, v in snapshot(dest).items() if not k.split("/")[-1].startswith(".")}
    theirs = {k: v for k, v in snapshot(fixtures).items() if not k.endswith("README.md")}
    assert mine == theirs
    main(["fetch", str(dest), "--quiet"])  # a second run finds every file verified and keeps it
    assert {k: v for k, v in snapshot(dest).items() if not k.split("/")[-1].startswith(".")} == theirs


@pytest.mark.parametrize(("key", "repo", "commit"), [
    ("visium_mouse_cytassist", "Perik-Zavodskii/CoexpressDeconvolve", "38b3bddd9585fcca1f61cdff58f25fc207cfa892"),
    ("visium_human_heart_subset", "scverse/scanpy", "fabadb9412c0d1cd9df9d9c2e95ac266d564ee18"),
])
def test_visium_fixtures_are_pinned(fixtures, key, repo, commit):
    info = get_dataset(key)
    local = sorted(p.relative_to(fixtures).as_posix() for p in (fixtures / key).rglob("*") if p.is_file())
    assert sorted(f.target for f in info.files) == local
    for f in info.files:
        assert f.url.startswith(f"https://raw.githubusercontent.com/{repo}/{commit}/")
        assert f.sha256 == sha256sum(fixtures / f.target)

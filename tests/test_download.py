"""Tests of mack.data.download against a loopback HTTP server and file:// mirrors (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mack.data import download
from mack.data.coco import coco_mini_paths, load_coco
from mack.data.download import (
    COCO_MINI_IMAGES,
    RECIPES,
    REMOTES,
    TARGETS,
    DownloadError,
    Remote,
    cut_coco,
    extract,
    fetch,
    main,
)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path: Path):
    """Serve tmp_path/served on 127.0.0.1 (loopback only); yield (base_url, folder, requests)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, handler.requests
    httpd.shutdown()
    httpd.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote_for(url: str, path: str, data: bytes | None, **options) -> Remote:
    return Remote(url=url, path=path, sha256=None if data is None else sha256(data), size="1 KB",
                  licence="test", **options)  # fmt: skip


# ----------------------------------------------------------------------------- fetch


def test_fetch_checks_sha256(server, tmp_path: Path) -> None:
    base, folder, _ = server
    data = b"bottom-up features" * 100
    (folder / "a.bin").write_bytes(data)

    path = fetch(remote_for(f"{base}/a.bin", "x/a.bin", data), tmp_path / "root", progress=False)

    assert path == tmp_path / "root" / "x" / "a.bin"
    assert path.read_bytes() == data


def test_fetch_hash_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    base, folder, _ = server
    (folder / "a.bin").write_bytes(b"changed by the publisher")
    remote = remote_for(f"{base}/a.bin", "x/a.bin", b"the original bytes")

    with pytest.raises(DownloadError) as caught:
        fetch(remote, tmp_path / "root", progress=False)

    message = str(caught.value)
    assert f"{base}/a.bin" in message
    assert remote.sha256 in message
    assert "does not match" in message
    assert list((tmp_path / "root" / "x").iterdir()) == []  # no partial or temporary file


def test_fetch_without_hash_logs_sha256(server, tmp_path: Path, caplog) -> None:
    base, folder, _ = server
    data = b"karpathy splits"
    (folder / "k.zip").write_bytes(data)

    with caplog.at_level(logging.INFO, logger="mack.data.download"):
        fetch(remote_for(f"{base}/k.zip", "k.zip", None), tmp_path, progress=False)

    assert sha256(data) in caplog.text
    assert "pin it" in caplog.text


def test_fetch_skips_existing_file(server, tmp_path: Path) -> None:
    base, folder, requests = server
    data = b"image bytes"
    (folder / "i.jpg").write_bytes(data)
    remote = remote_for(f"{base}/i.jpg", "i.jpg", data)

    fetch(remote, tmp_path, progress=False)
    fetch(remote, tmp_path, progress=False)

    assert requests == ["/i.jpg"]


def test_fetch_missing_url_raises(server, tmp_path: Path) -> None:
    base, _, _ = server

    with pytest.raises(DownloadError, match=r"/nothing.zip: download failed \(HTTPError"):
        fetch(remote_for(f"{base}/nothing.zip", "n.zip", None), tmp_path, progress=False)


def test_fetch_from_file_mirror(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "vg").mkdir(parents=True)
    (mirror / "vg" / "objects.json.zip").write_bytes(b"zip bytes")

    path = fetch(REMOTES["vg-objects"], tmp_path / "root", mirror=f"file://{mirror}",
                 progress=False)  # fmt: skip

    assert path == tmp_path / "root" / "vg" / "objects.json.zip"
    assert path.read_bytes() == b"zip bytes"


# ----------------------------------------------------------------------------- extract


def test_extract_members_and_folders(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("image_data.json", "[]")
        handle.writestr("VG_100K/1.jpg", b"jpg")

    first = extract(archive, {"image_data.json": "vg/image_data.json", "*": "vg/images"}, tmp_path)
    again = extract(archive, {"image_data.json": "vg/image_data.json"}, tmp_path)

    assert (tmp_path / "vg" / "image_data.json").read_text() == "[]"
    assert (tmp_path / "vg" / "images" / "VG_100K" / "1.jpg").read_bytes() == b"jpg"
    assert len(first) == 3  # "*" also copies image_data.json into vg/images
    assert again == []


def test_extract_missing_member_named(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("other.json", "[]")

    with pytest.raises(DownloadError, match="member 'objects.json' not found"):
        extract(archive, {"objects.json": "vg/objects.json"}, tmp_path)


# ----------------------------------------------------------------------------- registry and layout


def test_registry_urls_and_paths() -> None:
    hosts = {"images.cocodataset.org", "visualgenome.org", "cs.stanford.edu"}
    for name, remote in REMOTES.items():
        url = urlparse(remote.url)
        assert url.scheme in ("http", "https"), name
        assert url.hostname in hosts, name
        assert not Path(remote.path).is_absolute(), name
        assert remote.sha256 is None or len(remote.sha256) == 64, name
        assert remote.licence and remote.size, name
    for target in TARGETS.values():
        assert set(target["remotes"]) <= set(REMOTES)
        assert set(target["recipes"]) <= set(RECIPES)


def test_paper_layout_matches_tier() -> None:
    """Every file that mack.tiers.PaperTier reads is fetched or has a recipe."""
    from mack.tiers import PaperTier  # imports torch, so only here

    remotes, recipes = download.plan("paper")
    fetched = {path for name in remotes for path in REMOTES[name].extract.values()}
    recipe_paths = " ".join(RECIPES[name].path for name in recipes)
    tier = PaperTier(root="ROOT")

    assert {"vg/attributes.json", "vg/objects.json", "vg/image_data.json"} <= fetched
    assert "vg/features.tsv" in recipe_paths
    for folder in tier.folders.values():
        assert f"{folder}/" in recipe_paths
    assert "similarities/<model>_<train>_to_<test>.npy" in recipe_paths
    assert tier._similarity_path("clip", "flickr30k", "flickr30k").parent.name == "similarities"


def test_coco_mini_image_list() -> None:
    assert len(COCO_MINI_IMAGES["train2017"]) == len(set(COCO_MINI_IMAGES["train2017"])) == 80
    assert len(COCO_MINI_IMAGES["val2017"]) == len(set(COCO_MINI_IMAGES["val2017"])) == 79
    remote = download.coco_image_remote("val2017", 139)
    assert remote.url == "http://images.cocodataset.org/val2017/000000000139.jpg"
    assert remote.path == "coco-mini/val2017/000000000139.jpg"


def test_vg_images_only_on_request() -> None:
    assert "vg-images-1" not in download.plan("paper")[0]
    assert {"vg-images-1", "vg-images-2"} <= set(download.plan("paper", vg_images=True)[0])
    with pytest.raises(ValueError, match="unknown target 'full'"):
        download.plan("full")


# ----------------------------------------------------------------------------- coco-mini end to end


def fake_coco_mirror(folder: Path) -> None:
    """Write a mirror with a small annotations zip (mini images plus others) and every photo."""
    annotations = {}
    for split, ids in COCO_MINI_IMAGES.items():
        all_ids = [*ids, 1, 2, 3]  # three images that are not in coco-mini
        images = [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in all_ids
        ]
        boxes = [{"id": 10 * i + k, "image_id": i, "bbox": [1, 2, 3, 4], "category_id": 1,
                  "iscrowd": 0, "segmentation": [[1, 2, 3, 4]]} for i in all_ids for k in (0, 1)]  # fmt: skip
        captions = [{"id": 10 * i + k, "image_id": i, "caption": f"a dog {k}"}
                    for i in all_ids for k in range(5)]  # fmt: skip
        info = {"description": "test"}
        annotations[f"annotations/instances_{split}.json"] = {
            "info": info, "licenses": [], "images": images, "annotations": boxes,
            "categories": [{"id": 1, "name": "dog", "supercategory": "animal"}],
        }  # fmt: skip
        annotations[f"annotations/captions_{split}.json"] = {
            "info": info, "licenses": [], "images": images, "annotations": captions,
        }  # fmt: skip
        for image_id in ids:
            path = folder / "coco-mini" / split / f"{image_id:012d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8 fake jpeg")
    (folder / "coco").mkdir()
    with zipfile.ZipFile(folder / "coco" / "annotations_trainval2017.zip", "w") as archive:
        for name, document in annotations.items():
            archive.writestr(name, json.dumps(document))


def test_download_coco_mini_layout(server, tmp_path: Path) -> None:
    base, folder, requests = server
    fake_coco_mirror(folder)
    root = tmp_path / "data"

    download.download("coco-mini", root, mirror=base, progress=False)

    paths = coco_mini_paths(root)
    val = load_coco(paths["val"].images_dir, paths["val"].instances_json,
                    paths["val"].captions_json)  # fmt: skip
    assert sorted(val.images) == sorted(COCO_MINI_IMAGES["val2017"])
    assert val.n_boxes == 2 * 79
    assert val.n_captions == 5 * 79
    instances = json.loads(paths["train"].instances_json.read_text())
    assert {entry["image_id"] for entry in instances["annotations"]} == set(
        COCO_MINI_IMAGES["train2017"]
    )
    assert instances["info"] == {"description": "test"}
    assert len(requests) == 1 + 159


def test_cut_coco_reports_missing_images(tmp_path: Path) -> None:
    document = {"images": [{"id": 1}], "annotations": []}
    for kind in ("instances", "captions"):
        (tmp_path / f"{kind}_val2017.json").write_text(json.dumps(document))

    with pytest.raises(DownloadError, match=r"1 coco-mini images are not in the file, e.g. \[2\]"):
        cut_coco(tmp_path, tmp_path / "out", {"val2017": [1, 2]})


# ----------------------------------------------------------------------------- command line


def test_dry_run_lists_files_and_recipes(tmp_path: Path, capsys) -> None:
    status = main(["paper", "--root", str(tmp_path), "--dry-run"])

    output = capsys.readouterr().out
    assert status == 0
    assert "https://visualgenome.org/static/data/dataset/attributes.json.zip" in output
    assert f"unzip attributes.json -> {tmp_path}/vg/attributes.json" in output
    assert "sha256 none registered" in output
    assert "3 inputs have no public download" in output
    assert "kaggle datasets download kuanghueilee/scan-features" in output
    assert f"extract_vg_features({tmp_path}/'vg/images'" in output
    assert "save_similarity" in output
    assert list(tmp_path.iterdir()) == []


def test_download_error_exit_status(server, tmp_path: Path, capsys) -> None:
    base, _, _ = server

    status = main(["paper", "--root", str(tmp_path), "--mirror", base])

    assert status == 1
    assert "error:" in capsys.readouterr().err

"""Fetch the public inputs of the coco-mini and paper tiers into one data root, with pooch.

    python -m mack.data.download coco-mini --root DIR   # COCO 2017 annotations + 159 photos
    python -m mack.data.download paper --root DIR       # Visual Genome JSON, Karpathy splits
    python -m mack.data.download paper --root DIR --dry-run   # list files, fetch nothing

Each file comes from its publisher's URL (`REMOTES`). pooch writes a download to a temporary file
and renames it when complete, so an interrupted run leaves no partial file and a rerun fetches only
what is missing. A file with a known sha256 is checked. For the others the registry has None, and
the sha256 of what was downloaded is logged, so a user can pin it. Inputs without a public download
(bottom-up features of the VG ground-truth boxes, base-model similarity matrices, the SCAN precomp
features, which moved behind a Kaggle login) are listed in `RECIPES`, and the command prints the
recipe instead of failing. docs/data.md describes every file and the folder layout.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pooch
import requests
from tqdm.auto import tqdm

from mack.data.jsonstream import iter_json_members
from mack.io import atomic_write, write_json

logger = logging.getLogger(__name__)

COCO_IMAGES_URL = "http://images.cocodataset.org"
VG_URL = "https://visualgenome.org/static/data/dataset"


@dataclass(frozen=True)
class Remote:
    """One public file: where it comes from, where it goes under the data root, how to check it."""

    url: str
    path: str  # destination relative to the data root
    sha256: str | None  # None: the publisher gives no checksum; the download's sha256 is logged
    size: str  # approximate size as published or measured, for the log and docs/data.md
    licence: str
    extract: Mapping[str, str] = field(default_factory=dict)  # zip member -> path under the root
    large: bool = False  # show pooch's own byte progress bar


@dataclass(frozen=True)
class Recipe:
    """An input without a public download: what to run to make it, and where to put it."""

    path: str  # destination relative to the data root
    text: str


REMOTES: dict[str, Remote] = {
    "coco-annotations": Remote(
        url=f"{COCO_IMAGES_URL}/annotations/annotations_trainval2017.zip",
        path="coco/annotations_trainval2017.zip",
        sha256=None,
        size="241 MB",
        licence="CC BY 4.0 (COCO annotations)",
        extract={
            f"annotations/{kind}_{split}2017.json": f"coco/annotations/{kind}_{split}2017.json"
            for kind in ("instances", "captions")
            for split in ("train", "val")
        },
        large=True,
    ),
    "vg-image-data": Remote(
        url=f"{VG_URL}/image_data.json.zip",
        path="vg/image_data.json.zip",
        sha256=None,
        size="unverified (a few MB)",
        licence="CC BY 4.0 (Visual Genome)",
        extract={"image_data.json": "vg/image_data.json"},
    ),
    # NOTE: the unversioned objects.json.zip is VG's latest release (1.4 since 2017);
    # objects_v1_2.json.zip next to it is 1.2. attributes.json.zip has one release.
    "vg-objects": Remote(
        url=f"{VG_URL}/objects.json.zip",
        path="vg/objects.json.zip",
        sha256=None,
        size="unverified (hundreds of MB)",
        licence="CC BY 4.0 (Visual Genome)",
        extract={"objects.json": "vg/objects.json"},
        large=True,
    ),
    "vg-attributes": Remote(
        url=f"{VG_URL}/attributes.json.zip",
        path="vg/attributes.json.zip",
        sha256=None,
        size="unverified (hundreds of MB)",
        licence="CC BY 4.0 (Visual Genome)",
        extract={"attributes.json": "vg/attributes.json"},
        large=True,
    ),
    "vg-images-1": Remote(
        url="https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
        path="vg/images.zip",
        sha256=None,
        size="about 9 GB",
        licence="Visual Genome terms (images from Flickr and COCO, each with its own licence)",
        extract={"*": "vg/images"},
        large=True,
    ),
    "vg-images-2": Remote(
        url="https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
        path="vg/images2.zip",
        sha256=None,
        size="about 5 GB",
        licence="Visual Genome terms (images from Flickr and COCO, each with its own licence)",
        extract={"*": "vg/images"},
        large=True,
    ),
    "karpathy-splits": Remote(
        url="http://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
        path="karpathy/caption_datasets.zip",
        sha256=None,
        size="unverified (tens of MB)",
        licence="no licence stated; captions from Flickr30k and COCO",
        extract={
            "dataset_flickr30k.json": "karpathy/dataset_flickr30k.json",
            "dataset_coco.json": "karpathy/dataset_coco.json",
        },
        large=True,
    ),
}

RECIPES: dict[str, Recipe] = {
    "scan-precomp": Recipe(
        path="f30k_precomp/ and coco_precomp/",
        text=(
            "SCAN precomp features (bottom-up Faster R-CNN, 36 regions x 2048 per image) and "
            "captions. The SCAN authors first served data.zip (about 34 GB) from "
            "https://scanproject.blob.core.windows.net/scan-data/data.zip; that link is dead and "
            "they now host the files on Kaggle, which needs a Kaggle account:\n"
            "  pip install kaggle   # then put your API token in ~/.kaggle/kaggle.json\n"
            "  kaggle datasets download kuanghueilee/scan-features -p DIR\n"
            "Unzip it and move data/f30k_precomp and data/coco_precomp to DATA_ROOT/, so that "
            "DATA_ROOT/f30k_precomp/test_ims.npy (1000 x 36 x 2048) and test_caps.txt (5000 "
            "lines) exist, and DATA_ROOT/coco_precomp/testall_ims.npy (5000 x 36 x 2048) and "
            "testall_caps.txt (25000 lines). Check them with "
            "mack.data.precomp.load_precomp(folder, split)."
        ),
    ),
    "vg-features": Recipe(
        path="vg/features.tsv",
        text=(
            "Bottom-up region features of the Visual Genome boxes. No public file has features "
            "of the VG ground-truth boxes, so make one of two kinds:\n"
            "  (a) features of the annotated boxes (what the paper describes): download the VG "
            "images (`--vg-images`), wrap your region feature extractor in a "
            "mack.encoders.RegionEncoder and run\n"
            "      mack.vgknowledge.extract_vg_features(DATA_ROOT/'vg/images', "
            "DATA_ROOT/'vg/attributes.json', encoder, DATA_ROOT/'vg/features.tsv')\n"
            "  (b) the detector's own 36 boxes per image: run bottom-up-attention's "
            "tools/generate_tsv.py (github.com/peteanderson80/bottom-up-attention) on the VG "
            "images, save the TSV as vg/features.tsv, and build the knowledge with "
            "mack.vgknowledge.build_from_vg(..., region_boxes='detected').\n"
            "Both write the TSV columns image_id, image_w, image_h, num_boxes, boxes, features."
        ),
    ),
    "similarities": Recipe(
        path="similarities/<model>_<train>_to_<test>.npy",
        text=(
            "Base-model similarity matrices to re-rank (CLIP, ALBEF, VSRN, SAEM). No public "
            "file has them. Compute each as an (n_images, n_texts) float array in the precomp "
            "order (caption 5i..5i+4 belongs to image i) with the model's public checkpoint, "
            "and save it with mack.data.similarity.save_similarity(path, sims) as "
            "DATA_ROOT/similarities/<model>_<train>_to_<test>.npy, where train and test are "
            "flickr30k or mscoco (zero-shot models: train = test), e.g. "
            "clip_flickr30k_to_flickr30k.npy or vsrn_mscoco_to_flickr30k.npy. The image order "
            "is ids/f30k_test_image_names.txt (Flickr30k 1K test) and "
            "ids/coco_testall_image_ids.txt (MSCOCO 5K test) of the Karpathy splits."
        ),
    ),
}

# Images of the coco-mini tier: the COCO 2017 images of Obmutescence/COCO-MINI
# (commit 644f29e7c1d2eefd9c4412d39bc5b0ee6fd0afd4) that its annotation files list.
COCO_MINI_IMAGES: dict[str, tuple[int, ...]] = {
    "train2017": (
        790, 30752, 37666, 54718, 63217, 69468, 70133, 72258, 78499, 84284, 84533, 89232,
        100667, 107438, 113488, 114174, 116270, 121647, 125870, 129648, 133030, 145311, 157206,
        159269, 161846, 163497, 172123, 174375, 174632, 177977, 183872, 187334, 194322, 196393,
        211325, 211891, 212679, 213148, 214704, 215657, 216794, 227000, 231460, 232357, 234748,
        249346, 252639, 256353, 281789, 284218, 322517, 330993, 332078, 353072, 358083, 370162,
        373381, 379349, 408805, 409194, 418049, 419474, 420862, 432430, 433998, 442450, 463557,
        466137, 466547, 484641, 488571, 489520, 493652, 516008, 525891, 535506, 538113, 539216,
        544238, 551757,
    ),
    "val2017": (
        139, 802, 11813, 18575, 22192, 22892, 34417, 62554, 73326, 92660, 99053, 101787, 106235,
        109313, 117645, 126107, 128598, 135561, 136334, 151938, 153797, 155341, 160012, 165518,
        172648, 174231, 181303, 183709, 192699, 205401, 214753, 217285, 229358, 229997, 231125,
        237517, 244592, 255165, 261712, 262227, 269196, 275791, 310200, 311002, 328683, 343803,
        349860, 350679, 357501, 358427, 359219, 368212, 370208, 377575, 397133, 403353, 406129,
        407574, 423617, 434204, 435206, 453302, 460229, 475678, 482585, 501368, 516916, 519208,
        519611, 530836, 536038, 549055, 551780, 552775, 553664, 557172, 565607, 568290, 570448,
    ),
}  # fmt: skip

TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "coco-mini": {"remotes": ("coco-annotations",), "recipes": ()},
    "paper": {
        "remotes": ("vg-image-data", "vg-objects", "vg-attributes", "karpathy-splits"),
        "recipes": ("vg-features", "scan-precomp", "similarities"),
    },
}
VG_IMAGE_REMOTES = ("vg-images-1", "vg-images-2")


def coco_image_remote(split: str, image_id: int) -> Remote:
    """Return the Remote of one COCO 2017 image, stored as coco-mini/<split>/<id:012d>.jpg."""
    name = f"{image_id:012d}.jpg"
    return Remote(
        url=f"{COCO_IMAGES_URL}/{split}/{name}",
        path=f"coco-mini/{split}/{name}",
        sha256=None,
        size="about 160 KB",
        licence="the image's own Flickr licence (its COCO `license` id)",
    )


# ----------------------------------------------------------------------------- fetching


class DownloadError(RuntimeError):
    """A download failed or did not match its registered checksum."""


def _copy_downloader(url: str, output_file: str, _pooch: object) -> None:
    """pooch downloader for file:// URLs (a local mirror)."""
    source = Path(url.removeprefix("file://"))
    if not source.is_file():
        raise FileNotFoundError(f"{source}: mirror file not found")
    shutil.copyfile(source, output_file)


def fetch(remote: Remote, root: str | os.PathLike, *, mirror: str | None = None,
          progress: bool = True) -> Path:  # fmt: skip
    """Download one file to root/remote.path unless it is already there and valid; return its path.

    mirror: a base URL (http://, https:// or file://) used instead of the publisher's host; the
    file is looked up at <mirror>/<remote.path>.
    """
    target = Path(root) / remote.path
    url = f"{mirror.rstrip('/')}/{remote.path}" if mirror else remote.url
    known_hash = f"sha256:{remote.sha256}" if remote.sha256 else None
    if url.startswith("file://"):
        downloader = _copy_downloader
    else:
        downloader = pooch.HTTPDownloader(progressbar=progress and remote.large, timeout=60)
    try:
        path = pooch.retrieve(url, known_hash, fname=target.name, path=target.parent,
                              downloader=downloader)  # fmt: skip
    except ValueError as error:  # pooch raises ValueError for a hash mismatch
        raise DownloadError(
            f"{url}: the download does not match the registered sha256 {remote.sha256} "
            f"({error}). Nothing was written to {target}. Retry; if it fails again, the "
            "publisher changed the file: check it and update the sha256 in "
            "mack.data.download.REMOTES."
        ) from error
    except (requests.RequestException, OSError) as error:
        raise DownloadError(
            f"{url}: download failed ({type(error).__name__}: {error}). Check the network "
            f"connection and the URL, then run the command again; finished files are kept."
        ) from error
    if remote.sha256 is None:
        logger.info("%s: sha256 %s (no registered checksum; pin it in REMOTES)", target,
                    pooch.file_hash(path, alg="sha256"))  # fmt: skip
    return Path(path)


def extract(zip_path: Path, members: Mapping[str, str], root: Path) -> list[Path]:
    """Extract zip members to their paths under root ("*" extracts everything into a folder).

    A member whose destination already has the member's size is skipped. Each file is written
    atomically, so an interrupted extraction leaves no truncated file.
    """
    written = []
    with zipfile.ZipFile(zip_path) as archive:
        infos = {info.filename: info for info in archive.infolist() if not info.is_dir()}
        for member, destination in members.items():
            if member == "*":
                pairs = [(info, root / destination / name) for name, info in infos.items()]
            elif member in infos:
                pairs = [(infos[member], root / destination)]
            else:
                raise DownloadError(
                    f"{zip_path}: member {member!r} not found (the archive has "
                    f"{sorted(infos)[:5]}...). The publisher may have changed the archive; "
                    "update mack.data.download.REMOTES."
                )
            for info, path in pairs:
                if path.is_file() and path.stat().st_size == info.file_size:
                    continue
                with archive.open(info) as source, atomic_write(path, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                written.append(path)
    return written


# ----------------------------------------------------------------------------- coco-mini


def cut_coco(annotations_dir: Path, out_dir: Path, image_ids: Mapping[str, Sequence[int]]) -> None:
    """Write {instances,captions}_<split>.json with only the listed images and their annotations.

    annotations_dir: the full COCO 2017 annotation files. The files are streamed (ijson), so
    memory holds the kept entries only. Other top-level members (info, licenses, categories)
    are copied whole.
    """
    for split, ids in image_ids.items():
        kept_ids = set(ids)
        for kind in ("instances", "captions"):
            source = annotations_dir / f"{kind}_{split}.json"
            document: dict = {}
            for item in iter_json_members(source, ("images", "annotations"), progress=True):
                if item.index is None:
                    document[item.key] = item.value
                    continue
                entry = item.value
                image_id = entry.get("id") if item.key == "images" else entry.get("image_id")
                if image_id in kept_ids:
                    document.setdefault(item.key, []).append(entry)
            found = {entry["id"] for entry in document.get("images", [])}
            if found != kept_ids:
                missing = sorted(kept_ids - found)
                raise DownloadError(
                    f"{source}: {len(missing)} coco-mini images are not in the file, e.g. "
                    f"{missing[:5]}. Re-download the COCO 2017 annotations."
                )
            write_json(out_dir / f"{kind}_{split}.json", document)
            logger.info("wrote %s: %d images, %d annotations", out_dir / f"{kind}_{split}.json",
                        len(found), len(document.get("annotations", [])))  # fmt: skip


def download_coco_mini(root: Path, *, mirror: str | None = None, progress: bool = True) -> None:
    """Fetch the COCO 2017 annotations and the coco-mini photos, and cut the annotation files."""
    annotations = REMOTES["coco-annotations"]
    extract(fetch(annotations, root, mirror=mirror, progress=progress), annotations.extract, root)
    images = [coco_image_remote(split, i) for split, ids in COCO_MINI_IMAGES.items() for i in ids]
    for remote in tqdm(images, desc="coco-mini images", disable=not progress):
        fetch(remote, root, mirror=mirror, progress=False)
    cut_coco(root / "coco" / "annotations", root / "coco-mini" / "annotations", COCO_MINI_IMAGES)


# ----------------------------------------------------------------------------- targets


def plan(target: str, *, vg_images: bool = False) -> tuple[list[str], list[str]]:
    """Return the registry names of the remotes and recipes of a target."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {sorted(TARGETS)}")
    remotes = list(TARGETS[target]["remotes"])
    if vg_images and target == "paper":
        remotes += VG_IMAGE_REMOTES
    return remotes, list(TARGETS[target]["recipes"])


def recipe_text(names: Iterable[str], root: Path) -> str:
    """Return the recipes of the named inputs, with DATA_ROOT replaced by `root`."""
    parts = []
    for name in names:
        recipe = RECIPES[name]
        parts.append(
            f"[{name}] -> {root / recipe.path}\n{recipe.text.replace('DATA_ROOT', str(root))}"
        )
    return "\n\n".join(parts)


def download(target: str, root: str | os.PathLike, *, mirror: str | None = None,
             vg_images: bool = False, progress: bool = True) -> list[str]:  # fmt: skip
    """Fetch every public input of `target` into `root`; return the names of its recipes."""
    root = Path(root)
    remotes, recipes = plan(target, vg_images=vg_images)
    if target == "coco-mini":
        download_coco_mini(root, mirror=mirror, progress=progress)
    else:
        for name in remotes:
            remote = REMOTES[name]
            logger.info("%s: %s (%s) -> %s", name, remote.url, remote.size, root / remote.path)
            extract(fetch(remote, root, mirror=mirror, progress=progress), remote.extract, root)
    return recipes


def describe(target: str, root: Path, *, vg_images: bool = False) -> str:
    """Return the dry-run listing: each file's URL, size, licence and destination."""
    remotes, recipes = plan(target, vg_images=vg_images)
    lines = [f"{target} -> {root}"]
    for name in remotes:
        remote = REMOTES[name]
        checksum = remote.sha256 or "none registered"
        lines.append(f"  {name}: {remote.url}\n    {remote.size}, {remote.licence}, sha256 "
                     f"{checksum}\n    -> {root / remote.path}")  # fmt: skip
        lines += [f"    unzip {member} -> {root / path}" for member, path in remote.extract.items()]
    if target == "coco-mini":
        n_images = sum(len(ids) for ids in COCO_MINI_IMAGES.values())
        lines.append(f"  {n_images} COCO images from {COCO_IMAGES_URL}/<split>/<id:012d>.jpg "
                     f"-> {root}/coco-mini/<split>/, then annotations cut to them -> "
                     f"{root}/coco-mini/annotations/")  # fmt: skip
    lines += [f"  {name}: no public download, recipe below" for name in recipes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mack.data.download", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("target", choices=sorted(TARGETS), help="which tier's inputs to fetch")
    parser.add_argument("--root", required=True, type=Path, help="data root folder to fill")
    parser.add_argument("--mirror", help="base URL (http, https or file) to fetch from instead "
                        "of the publishers; files are looked up at MIRROR/<path under root>")  # fmt: skip
    parser.add_argument("--vg-images", action="store_true",
                        help="paper: also fetch the Visual Genome images (about 14 GB)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="list the files, fetch nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.dry_run:
        print(describe(args.target, args.root, vg_images=args.vg_images))
        recipes = plan(args.target, vg_images=args.vg_images)[1]
    else:
        try:
            recipes = download(args.target, args.root, mirror=args.mirror,
                               vg_images=args.vg_images)  # fmt: skip
        except DownloadError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if recipes:
        print(f"\n{len(recipes)} inputs have no public download; make them as follows:\n")
        print(recipe_text(recipes, args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())

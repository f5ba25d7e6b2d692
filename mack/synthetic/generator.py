"""Generate the whole synthetic world into a folder: knowledge source, two target datasets, metadata."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mack.io import atomic_write
from mack.synthetic import vocabulary, writers
from mack.synthetic.captions import CaptionWriter
from mack.synthetic.images import (
    DATASETS,
    REGIONS_PER_IMAGE,
    DatasetProfile,
    KnowledgeSourceSampler,
    TargetSampler,
    knowledge_frequencies,
)
from mack.synthetic.world import (
    STREAM_TARGET,
    STREAM_VG,
    ConceptSpace,
    Distortion,
    FeatureMap,
    WorldParams,
    stream,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # raise when a change of this package changes the generated files
MAX_DIM = 2048
# Images mapped to features per matrix product. It is a constant because BLAS results can
# depend on the matrix shape, and the random draws do not depend on it.
CHUNK_IMAGES = 128
SPLITS = ("train", "test")


@dataclass(frozen=True)
class WorldSize:
    """How many images each part of the world has, and how steep the knowledge long tail is."""

    vg_images: int
    objects_per_image: float
    zipf_exponent: float
    images: dict[str, dict[str, int]]  # dataset -> split -> number of images


SIZES: dict[str, WorldSize] = {
    "tiny": WorldSize(800, 8.0, 2.0, {"f30k_like": {"train": 64, "test": 100},
                                      "coco_like": {"train": 64, "test": 50}}),
    "small": WorldSize(2000, 8.0, 2.0, {"f30k_like": {"train": 700, "test": 500},
                                        "coco_like": {"train": 450, "test": 300}}),
    "f30k": WorldSize(3000, 8.0, 2.2, {"f30k_like": {"train": 1000, "test": 1000},
                                       "coco_like": {"train": 1000, "test": 1000}}),
}  # fmt: skip


def check_arguments(seed: int, size: str, dim: int) -> WorldSize:
    """Return the size spec, or raise ValueError naming the bad argument and the allowed values."""
    if size not in SIZES:
        raise ValueError(f"unknown synthetic world size {size!r}. Use one of {sorted(SIZES)}")
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or not 4 <= dim <= MAX_DIM:
        raise ValueError(f"feature dim must be an integer from 4 to {MAX_DIM}, got {dim!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return SIZES[size]


def generate(
    root: str | os.PathLike,
    seed: int = 0,
    size: str = "small",
    dim: int = 256,
    *,
    params: WorldParams | None = None,
    reuse: bool = False,
    progress: bool = True,
) -> Path:
    """Write the synthetic world into `root` and return `root` as a Path.

    Files: vg/{image_data,objects,attributes}.json and vg/features.tsv (the knowledge source),
    {f30k_like,coco_like}/{train,test}_{ims.npy,caps.txt} (SCAN precomp, ims (N, 36, dim) float32,
    5 captions per image), groups.json (word -> semantic group) and manifest.json (arguments,
    counts and the sha256 of every other file), written last.
    reuse: when `root` already contains a world of the same arguments, generator version and
    vocabulary, and every file matches its manifest hash, return without writing anything.
    """
    spec = check_arguments(seed, size, dim)
    seed, dim = int(seed), int(dim)
    params = params or WorldParams()
    root = Path(root)
    if reuse and world_matches(root, seed, size, dim, params):
        log.info("reusing the synthetic world in %s (manifest and hashes match)", root)
        return root
    (root / "manifest.json").unlink(missing_ok=True)
    started = time.perf_counter()
    log.info("generating the %s synthetic world (seed %d, dim %d) in %s", size, seed, dim, root)

    vocabulary.check_vocabulary()
    space = ConceptSpace.create(seed, params)
    feature_map = FeatureMap.create(seed, dim, params)
    noun_probs = knowledge_frequencies(space, stream(seed, STREAM_VG, 0), spec.zipf_exponent)
    total = spec.vg_images + sum(sum(splits.values()) for splits in spec.images.values())
    bar = tqdm(total=total, desc="synthetic world", unit="image", disable=not progress)

    vg_counts = write_knowledge_source(root / "vg", seed, spec, space, feature_map, noun_probs, bar)
    counts: dict = {"vg": vg_counts}
    for profile in DATASETS:
        counts[profile.name] = write_target_dataset(
            root / profile.name, seed, spec, profile, space, feature_map, noun_probs, bar
        )
    bar.close()

    writers.write_json_file(root / "groups.json", vocabulary.word_groups())
    write_manifest(root, seed, size, dim, params, counts)
    log.info("synthetic world written in %.1f s", time.perf_counter() - started)
    return root


def write_knowledge_source(
    folder: Path,
    seed: int,
    spec: WorldSize,
    space: ConceptSpace,
    feature_map: FeatureMap,
    noun_probs: np.ndarray,
    bar: tqdm,
) -> dict:
    """Write the VG JSON files and the bottom-up TSV of region features, and return counts."""
    sampler = KnowledgeSourceSampler(space, noun_probs, spec.objects_per_image)
    rng = stream(seed, STREAM_VG, 1)
    collector = writers.VGJsonCollector()
    next_object_id = 1000
    n_objects = n_attributes = 0
    word_counts: Counter[str] = Counter()

    with atomic_write(folder / "features.tsv", "wb") as tsv:
        for start in range(0, spec.vg_images, CHUNK_IMAGES):
            images = []
            for image_id in range(start + 1, min(start + CHUNK_IMAGES, spec.vg_images) + 1):
                image = sampler.image(rng, image_id, next_object_id)
                next_object_id += len(image.objects)
                images.append(image)
            features = feature_map(np.concatenate([image.latents for image in images]))

            offset = 0
            for image in images:
                rows = features[offset : offset + len(image.objects)]
                offset += len(image.objects)
                tsv.write(writers.bottomup_line(image, rows))
                collector.add(image)
                n_objects += len(image.objects)
                n_attributes += sum(len(obj.attributes) for obj in image.objects)
                for obj in image.objects:
                    word_counts[obj.name.lower()] += 1
                    word_counts.update(obj.attributes)
            bar.update(len(images))

    collector.write(folder)
    regions = np.array(list(word_counts.values()))
    return {
        "images": spec.vg_images,
        "objects": n_objects,
        "attribute_annotations": n_attributes,
        "words": len(regions),
        "share_of_words_under_20_regions": round(float((regions < 20).mean()), 4),
    }


def write_target_dataset(
    folder: Path,
    seed: int,
    spec: WorldSize,
    profile: DatasetProfile,
    space: ConceptSpace,
    feature_map: FeatureMap,
    noun_probs: np.ndarray,
    bar: tqdm,
) -> dict:
    """Write {split}_ims.npy and {split}_caps.txt of one target dataset, and return counts."""
    seed_rng = stream(seed, STREAM_TARGET, profile.dataset_id, 0)
    sampler = TargetSampler(space, profile, noun_probs, seed_rng)
    distortion = Distortion.create(seed, profile.dataset_id, space.params)
    caption_writer = CaptionWriter(space)
    counts = {}
    for split_id, split in enumerate(SPLITS, start=1):
        n_images = spec.images[profile.name][split]
        image_rng = stream(seed, STREAM_TARGET, profile.dataset_id, split_id, 1)
        caption_rng = stream(seed, STREAM_TARGET, profile.dataset_id, split_id, 2)
        captions: list[str] = []
        shape = (n_images, REGIONS_PER_IMAGE, feature_map.output_bias.shape[0])

        with writers.npy_stream(folder / f"{split}_ims.npy", shape) as handle:
            for start in range(0, n_images, CHUNK_IMAGES):
                images = [
                    sampler.image(image_rng) for _ in range(min(CHUNK_IMAGES, n_images - start))
                ]
                latents = np.concatenate([image.latents for image in images])
                handle.write(feature_map(distortion(latents)).astype("<f4").tobytes())
                for image in images:
                    captions.extend(c.text for c in caption_writer.captions(caption_rng, image))
                bar.update(len(images))

        writers.write_captions(folder / f"{split}_caps.txt", captions)
        counts[split] = {"images": n_images, "captions": len(captions)}
    return counts


def manifest_header(seed: int, size: str, dim: int, params: WorldParams) -> dict:
    """Return the manifest fields that identify a world (everything but counts and files)."""
    return {
        "generator": "mack.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "dim": dim,
        "regions_per_image": REGIONS_PER_IMAGE,
        "params": asdict(params),
    }


def world_matches(root: Path, seed: int, size: str, dim: int, params: WorldParams) -> bool:
    """Return True if `root` contains a complete world of these arguments with intact files."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    header = manifest_header(seed, size, dim, params)
    if any(manifest.get(key) != value for key, value in header.items()):
        return False

    files = manifest.get("files", {})
    groups = (writers.dumps(vocabulary.word_groups()) + "\n").encode("ascii")
    if files.get("groups.json", {}).get("sha256") != hashlib.sha256(groups).hexdigest():
        return False  # the vocabulary changed since this world was written
    for relative, entry in files.items():
        path = root / relative
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return False
        if writers.file_digest(path) != entry.get("sha256"):
            return False
    return True


def write_manifest(root: Path, seed: int, size: str, dim: int, params: WorldParams, counts) -> None:
    """Write manifest.json: arguments, model constants, counts and the sha256 of every file."""
    names = ["groups.json", "vg/image_data.json", "vg/objects.json", "vg/attributes.json",
             "vg/features.tsv"]  # fmt: skip
    files = [root / name for name in names]
    for profile in DATASETS:
        for split in SPLITS:
            files += [
                root / profile.name / f"{split}_ims.npy",
                root / profile.name / f"{split}_caps.txt",
            ]
    manifest = manifest_header(seed, size, dim, params)
    manifest["counts"] = counts
    manifest["files"] = writers.file_table(root, files)
    writers.write_json_file(root / "manifest.json", manifest)

"""Data tiers: one interface over the synthetic world, the real COCO sample and the MACK paper's data.

A notebook asks its tier for the knowledge, a target dataset's images and captions, base-model
similarities and semantic groups, and never needs to know where they come from:

- `synthetic`: the generated world in data/synthetic/ (Visual Genome JSON, bottom-up TSV, SCAN
  precomp), written on first use.
- `coco-mini`: real COCO photos under $MACK_DATA/coco-mini, regions from EfficientNet-Lite0.
- `paper`: Visual Genome, bottom-up features and the SCAN precomp test sets under data/paper/
  (docs/data.md gives the layout and how to get each file).

Derived artefacts (knowledge, base similarities) are cached under the cache root, keyed by their
inputs and settings, so a changed parameter recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mack import baselines
from mack.config import PROJECT_ROOT, cache_root
from mack.config import data_root as data_root_of
from mack.data.precomp import load_precomp
from mack.data.similarity import load_similarity, save_similarity
from mack.knowledge import Knowledge
from mack.matching import ImageRegions
from mack.report import check_tier
from mack.text import ParsedText, TextParser

logger = logging.getLogger(__name__)

CAPTIONS_PER_IMAGE = 5
SYNTHETIC_ROOT = PROJECT_ROOT / "data" / "synthetic"
PAPER_ROOT = PROJECT_ROOT / "data" / "paper"
DEFAULT_COCO_SYNONYMS = PROJECT_ROOT / "data" / "coco_synonyms.json"


class TierDataMissingError(FileNotFoundError):
    """A tier's input file is missing. The message gives the path and how to get the file."""


@dataclass
class TargetSplit:
    """One split of a target dataset: region features and captions (caption 5i..5i+4 -> image i).

    images: (n_images, n_regions, F) float32 regions, padded, with per-image counts.
    captions: n_images * 5 strings.
    """

    dataset: str
    split: str
    images: ImageRegions
    captions: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def parse(self, parser: TextParser, progress: bool = True) -> list[ParsedText]:
        """Parse every caption against the parser's knowledge vocabulary."""
        return parser.parse_many(self.captions, progress=progress)


def fingerprint(*parts: Any) -> str:
    """Return a short sha256 of JSON-serialisable parts (paths count by name, size and mtime)."""

    def describe(part: Any) -> Any:
        if isinstance(part, Path):
            stat = part.stat()
            return [str(part), stat.st_size, stat.st_mtime_ns]
        return part

    text = json.dumps([describe(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _require(path: Path, how_to_get: str) -> Path:
    if not path.exists():
        raise TierDataMissingError(f"missing input: {path}. {how_to_get}")
    return path


class Tier:
    """Base class: what every notebook may ask of a tier."""

    name: str = ""
    datasets: tuple[str, ...] = ()
    test_split: dict[str, str] = {}
    has_attributes: bool = True

    def knowledge(self, region_cap: int | None = None, seed: int = 0) -> Knowledge:
        """Return the pretrained knowledge (eq. 1), built once per cap and seed and cached."""
        path = self._cache_dir() / f"knowledge-{self._knowledge_key(region_cap, seed)}.npz"
        if path.exists():
            logger.info("knowledge: cached %s", path)
            return Knowledge.load(path)
        knowledge = self._build_knowledge(region_cap, seed)
        knowledge.save(path)
        return knowledge

    def split(self, dataset: str, split: str) -> TargetSplit:
        """Return one split of a target dataset, loaded once per tier object."""
        self._check_dataset(dataset)
        loaded = self.__dict__.setdefault("_splits", {})
        if (dataset, split) not in loaded:
            loaded[dataset, split] = self._load_split(dataset, split)
        return loaded[dataset, split]

    def test(self, dataset: str | None = None) -> TargetSplit:
        """Return the test split of `dataset` (default: the tier's first dataset)."""
        dataset = self._check_dataset(dataset or self.datasets[0])
        return self.split(dataset, self.test_split[dataset])

    def train(self, dataset: str | None = None) -> TargetSplit:
        """Return the training split of `dataset` (used as unpaired images and texts)."""
        return self.split(dataset or self.datasets[0], "train")

    def synonyms(self) -> dict[str, str]:
        """Return the caption word -> knowledge word map that this tier's parser uses."""
        return {}

    def parser(self, knowledge: Knowledge) -> TextParser:
        """Return the caption parser for `knowledge`, with this tier's synonyms.

        The NLTK tagger is looked up on nltk.data.path, then in <data root>/nltk_data.
        """
        from mack.coco_mini import ensure_tagger

        ensure_tagger()
        return TextParser.from_knowledge(knowledge, synonyms=self.synonyms() or None)

    def _check_dataset(self, dataset: str) -> str:
        if dataset not in self.datasets:
            raise ValueError(
                f"unknown dataset {dataset!r} for tier {self.name!r}: use one of "
                f"{', '.join(self.datasets)}"
            )
        return dataset

    def _load_split(self, dataset: str, split: str) -> TargetSplit:
        raise NotImplementedError

    def base_similarities(self, dataset: str) -> dict[str, np.ndarray]:
        """Return base model name -> (n_images, n_texts) similarities on `dataset`'s test split."""
        raise NotImplementedError

    def cross_base_similarities(self, dataset: str) -> dict[str, np.ndarray]:
        """Return base models trained on another dataset and tested on `dataset` (Table 3)."""
        return {}

    def word_groups(self) -> dict[str, str]:
        """Return word -> semantic group, for colouring Figure 4."""
        return {}

    def _cache_dir(self) -> Path:
        path = cache_root() / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _knowledge_key(self, region_cap: int | None, seed: int) -> str:
        raise NotImplementedError

    def _build_knowledge(self, region_cap: int | None, seed: int) -> Knowledge:
        raise NotImplementedError


class PrecompTier(Tier):
    """A tier in the paper's formats: Visual Genome JSON + bottom-up TSV, and SCAN precomp sets.

    root/vg/attributes.json and root/vg/features.tsv give the knowledge; each target dataset is a
    folder of `{split}_ims.npy` and `{split}_caps.txt`.
    """

    folders: dict[str, str] = {}

    def __init__(self, root: str | os.PathLike, how_to_get: str, progress: bool = True):
        self.root = Path(root)
        self.how_to_get = how_to_get
        self.progress = progress

    def _vg_inputs(self) -> tuple[Path, Path]:
        vg = self.root / "vg"
        return (
            _require(vg / "attributes.json", self.how_to_get),
            _require(vg / "features.tsv", self.how_to_get),
        )

    def _knowledge_key(self, region_cap: int | None, seed: int) -> str:
        return fingerprint("vg-knowledge-v1", *self._vg_inputs(), region_cap, seed)

    def _build_knowledge(self, region_cap: int | None, seed: int) -> Knowledge:
        from mack.vgknowledge import build_from_vg

        attributes, features = self._vg_inputs()
        knowledge, report = build_from_vg(
            attributes, features, region_cap=region_cap, seed=seed,
            progress=self.progress,
        )  # fmt: skip
        logger.info("knowledge built: %s", report.to_dict())
        return knowledge

    def _load_split(self, dataset: str, split: str) -> TargetSplit:
        folder = self.root / self.folders[dataset]
        _require(folder / f"{split}_ims.npy", self.how_to_get)
        _require(folder / f"{split}_caps.txt", self.how_to_get)
        features, captions = load_precomp(folder, split, CAPTIONS_PER_IMAGE)
        return TargetSplit(dataset, split, ImageRegions.from_dense(features), captions)

    def _similarity_path(self, model: str, train: str, test: str) -> Path:
        return self.root / "similarities" / f"{model}_{train}_to_{test}.npy"

    def base_similarities(self, dataset: str) -> dict[str, np.ndarray]:
        return self._stored_similarities(dataset, dataset)

    def cross_base_similarities(self, dataset: str) -> dict[str, np.ndarray]:
        sims = {}
        for source in self.datasets:
            if source != dataset:
                sims.update(self._stored_similarities(source, dataset))
        return sims

    def _stored_similarities(self, train: str, test: str) -> dict[str, np.ndarray]:
        """Read root/similarities/<model>_<train>_to_<test>.npy for every model present."""
        sims = {}
        folder = self.root / "similarities"
        for path in sorted(folder.glob(f"*_{train}_to_{test}.npy")):
            model = path.name[: -len(f"_{train}_to_{test}.npy")]
            sims[model] = load_similarity(path)
        return sims


class SyntheticTier(PrecompTier):
    """The generated world: f30k_like and coco_like target sets, base models trained here."""

    name = "synthetic"
    datasets = ("f30k_like", "coco_like")
    folders = {"f30k_like": "f30k_like", "coco_like": "coco_like"}
    test_split = {"f30k_like": "test", "coco_like": "test"}

    def __init__(self, root: str | os.PathLike = SYNTHETIC_ROOT, seed: int = 0, size: str = "small",
                 dim: int = 256, progress: bool = True):  # fmt: skip
        how_to_get = "It is generated by `make synthetic` or mack.synthetic.generate()."
        super().__init__(root, how_to_get, progress)
        self.seed, self.size, self.dim = seed, size, dim
        self._ensure_world()

    def _ensure_world(self) -> None:
        """Generate the world unless `root` contains an intact one of the same settings and version.

        The generator compares the manifest (settings, generator version, vocabulary) and the
        sha256 of every file, so a stale, partial or edited world is written again.
        """
        from mack.synthetic import generate

        generate(self.root, seed=self.seed, size=self.size, dim=self.dim, reuse=True,
                 progress=self.progress)  # fmt: skip

    def base_similarities(self, dataset: str) -> dict[str, np.ndarray]:
        """Return {"VSE": the paired baseline trained and tested on `dataset`}."""
        self._check_dataset(dataset)
        return {"VSE": self._trained_base(dataset, dataset)}

    def cross_base_similarities(self, dataset: str) -> dict[str, np.ndarray]:
        """Return {"VSE": the baseline trained on the other dataset, tested on `dataset`}."""
        self._check_dataset(dataset)
        (source,) = [name for name in self.datasets if name != dataset]
        return {"VSE": self._trained_base(source, dataset)}

    def _trained_base(self, train: str, test: str) -> np.ndarray:
        """Train the paired VSE baseline on `train`'s training split and score `test`'s test split."""
        config = baselines.VSEConfig(seed=self.seed)
        train_split, test_split = self.split(train, "train"), self.test(test)
        files = [
            self.root / self.folders[name] / f"{split}_{kind}"
            for name, split in ((train, "train"), (test, self.test_split[test]))
            for kind in ("ims.npy", "caps.txt")
        ]
        key = fingerprint("vse-v1", *files, vars(config))
        path = self._cache_dir() / f"base-vse-{train}-to-{test}-{key}.npy"
        if path.exists():
            return load_similarity(path)
        model = baselines.train_vse(
            train_split.images, train_split.captions, config, progress=self.progress
        )
        sims = model.similarity(test_split.images, test_split.captions)
        save_similarity(path, sims)
        return sims

    @cached_property
    def _groups(self) -> dict[str, str]:
        return json.loads((self.root / "groups.json").read_text())

    def word_groups(self) -> dict[str, str]:
        return dict(self._groups)


class PaperTier(PrecompTier):
    """The MACK paper's data: Visual Genome + bottom-up features, Flickr30k 1K and MSCOCO 5K tests."""

    name = "paper"
    datasets = ("flickr30k", "mscoco")
    folders = {"flickr30k": "f30k_precomp", "mscoco": "coco_precomp"}
    test_split = {"flickr30k": "test", "mscoco": "testall"}

    def __init__(self, root: str | os.PathLike = PAPER_ROOT, progress: bool = True):
        how_to_get = "See docs/data.md; `make data-paper` fetches what is public."
        super().__init__(root, how_to_get, progress)


class CocoMiniTier(Tier):
    """The real COCO sample: category knowledge from train boxes, matching on the val images.

    Images are encoded by EfficientNet-Lite0; `regions` picks the val regions ("grid" or
    "gt-boxes"). There are no attribute words, so no adjective ablation.
    """

    name = "coco-mini"
    datasets = ("coco-mini",)
    test_split = {"coco-mini": "val"}
    has_attributes = False

    def __init__(self, data_root: str | os.PathLike | None = None, regions: str = "grid",
                 method: str | None = None, progress: bool = True,
                 synonyms: str | os.PathLike | None = DEFAULT_COCO_SYNONYMS):  # fmt: skip
        from mack import coco_mini

        if regions not in coco_mini.REGION_SETTINGS:
            raise ValueError(
                f"regions={regions!r} is not a coco-mini region setting: use one of "
                f"{', '.join(coco_mini.REGION_SETTINGS)}"
            )
        self.regions = regions
        self.method = method or coco_mini.DEFAULT_METHOD
        self.progress = progress
        self.synonyms_path = None if synonyms is None else Path(synonyms)
        self.data_root = data_root_of(data_root)
        self.data = coco_mini.load_data(self.data_root)

    @cached_property
    def _encoder(self):
        from mack.encoders import EfficientNetLite0Encoder, FeatureCache

        encoder = EfficientNetLite0Encoder(method=self.method)
        return encoder, FeatureCache(cache_root() / "features")

    def _knowledge_key(self, region_cap: int | None, seed: int) -> str:
        encoder, _ = self._encoder
        sets = {name: sorted(coco.images) for name, coco in self.data.knowledge_sets.items()}
        return fingerprint("coco-knowledge-v1", sets, encoder.settings(), region_cap, seed)

    def _build_knowledge(self, region_cap: int | None, seed: int) -> Knowledge:
        from mack import coco_mini

        encoder, cache = self._encoder
        # NOTE: region_cap is passed only when set, because build_coco_knowledge gains the
        # argument in a later change; until then a cap raises TypeError.
        options = {} if region_cap is None else {"region_cap": region_cap}
        knowledge, _ = coco_mini.build_coco_knowledge(
            self.data.knowledge_sets, encoder, cache, seed=seed, progress=self.progress, **options
        )
        return knowledge

    def _load_split(self, dataset: str, split: str) -> TargetSplit:
        from mack import coco_mini

        if split not in ("train", "val"):
            raise ValueError(f"unknown coco-mini split {split!r}: use 'train' or 'val'")
        coco = self.data.val if split == "val" else self.data.knowledge_sets["coco-mini train2017"]
        val = coco_mini.load_val(coco)
        encoder, cache = self._encoder
        regions = coco_mini.encode_val_regions(coco, val, encoder, cache, progress=self.progress)
        extra = {"image_ids": val.image_ids, "boxes": val.boxes[self.regions], "coco": coco}
        return TargetSplit(dataset, split, regions[self.regions], val.captions, extra)

    def synonyms(self) -> dict[str, str]:
        """Caption word -> COCO category ("man" -> "person"), from the tier's synonym file.

        The 80 category names miss most caption nouns that a Visual Genome vocabulary has as
        concepts of their own, so coco-mini parses with this map unless synonyms=None was passed.
        """
        if self.synonyms_path is None:
            return {}
        from mack.coco_mini import load_synonyms

        return load_synonyms(self.synonyms_path)

    def base_similarities(self, dataset: str) -> dict[str, np.ndarray]:
        """Return {"VSE": a VSE baseline trained on the 80 coco-mini train images and 400 captions}.

        The scores are cached, keyed by the data root, the encoder, the region setting and config.
        """
        self._check_dataset(dataset)
        config = baselines.VSEConfig(seed=0)
        encoder, _ = self._encoder
        key = fingerprint("vse-coco-v1", str(self.data_root), encoder.settings(), self.regions,
                          vars(config))  # fmt: skip
        path = self._cache_dir() / f"base-vse-{key}.npy"
        if path.exists():
            return {"VSE": load_similarity(path)}
        train, test = self.split(dataset, "train"), self.test(dataset)
        model = baselines.train_vse(train.images, train.captions, config, progress=self.progress)
        sims = model.similarity(test.images, test.captions)
        save_similarity(path, sims)
        return {"VSE": sims}

    def word_groups(self) -> dict[str, str]:
        """COCO supercategories: "animal", "vehicle", "food", ..."""
        groups = {}
        for coco in (*self.data.knowledge_sets.values(), self.data.val):
            groups.update({name.lower(): sup for name, sup in coco.supercategories.items()})
        return groups


def load_tier(tier: str, **options: Any) -> Tier:
    """Return the tier object for `tier` ("synthetic", "coco-mini" or "paper")."""
    check_tier(tier)
    if tier == "synthetic":
        return SyntheticTier(**options)
    if tier == "coco-mini":
        return CocoMiniTier(**options)
    return PaperTier(**options)

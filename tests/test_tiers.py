"""Tests of mack.tiers: the synthetic tier on a tiny generated world, the paper tier's missing-input
error, and the coco-mini tier on the real sample data (slow, skipped without it)."""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mack import baselines, config, metrics
from mack.data.vg import clean_attribute, clean_object_name
from mack.knowledge import ATTRIBUTE, OBJECT
from mack.synthetic import SIZES
from mack.tiers import (
    CocoMiniTier,
    PaperTier,
    SyntheticTier,
    TierDataMissingError,
    fingerprint,
    load_tier,
)

from helpers import needs_real_data, require_tagger

DIM = 32
TINY = SIZES["tiny"].images  # dataset -> split -> number of images


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny synthetic world, generated once for the module."""
    root = tmp_path_factory.mktemp("tiers") / "world"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MACK_CACHE", str(root.parent / "cache"))
        SyntheticTier(root=root, size="tiny", dim=DIM, progress=False)
    return root


@pytest.fixture
def tier(world: Path, monkeypatch) -> SyntheticTier:
    monkeypatch.setenv("MACK_CACHE", str(world.parent / "cache"))
    return SyntheticTier(root=world, size="tiny", dim=DIM, progress=False)


def brute_force_prototypes(world: Path) -> dict[str, np.ndarray]:
    """Average the TSV features of every word's boxes with plain loops over the raw files.

    The generator writes one TSV row per VG image with its boxes in the order of the image's
    objects, so object j of an image has feature row j.
    """
    features_of: dict[int, np.ndarray] = {}
    for line in (world / "vg" / "features.tsv").read_bytes().splitlines():
        image_id, _, _, num_boxes, _, features = line.split(b"\t")
        array = np.frombuffer(base64.b64decode(features), dtype=np.float32)
        features_of[int(image_id)] = array.reshape(int(num_boxes), -1)

    regions: dict[str, list[np.ndarray]] = defaultdict(list)
    for record in json.loads((world / "vg" / "attributes.json").read_text()):
        for row, obj in enumerate(record["attributes"]):
            words = {clean_object_name(name) for name in obj["names"]}
            words |= {clean_attribute(name) for name in obj.get("attributes", [])}
            for word in words - {""}:
                regions[word].append(features_of[record["image_id"]][row])
    return {word: np.mean(rows, axis=0) for word, rows in regions.items()}


# ----------------------------------------------------------------------------- synthetic tier


def test_synthetic_knowledge_matches_brute_force(tier: SyntheticTier, world: Path) -> None:
    knowledge = tier.knowledge()
    expected = brute_force_prototypes(world)

    assert sorted(knowledge.words) == sorted(expected)
    assert knowledge.dim == DIM
    for word in knowledge.words:
        np.testing.assert_allclose(
            knowledge.prototypes[knowledge.index[word]], expected[word], rtol=1e-5, atol=1e-6
        )
    assert set(knowledge.types) == {OBJECT, ATTRIBUTE}
    manifest = json.loads((world / "manifest.json").read_text())
    assert len(knowledge) == manifest["counts"]["vg"]["words"]


def test_synthetic_knowledge_is_cached(tier: SyntheticTier, monkeypatch) -> None:
    first = tier.knowledge(seed=0)

    def fail(*args, **kwargs):
        raise AssertionError("the knowledge was built again instead of read from the cache")

    monkeypatch.setattr(SyntheticTier, "_build_knowledge", fail)
    again = tier.knowledge(seed=0)

    assert again.words == first.words
    np.testing.assert_array_equal(again.prototypes, first.prototypes)
    assert len(list((config.cache_root() / "synthetic").glob("knowledge-*.npz"))) >= 1


def test_synthetic_region_cap_recomputes(tier: SyntheticTier) -> None:
    full = tier.knowledge()
    capped = tier.knowledge(region_cap=5)

    assert capped.words == full.words
    assert capped.counts.max() == 5
    np.testing.assert_array_equal(capped.counts, np.minimum(full.counts, 5))
    assert capped.provenance["region_cap"] == 5
    assert capped.provenance["share_kept"] == pytest.approx(capped.counts.sum() / full.counts.sum())


def test_synthetic_splits(tier: SyntheticTier) -> None:
    test = tier.test()
    train = tier.train("coco_like")

    n_test = TINY["f30k_like"]["test"]
    assert (test.dataset, test.split) == ("f30k_like", "test")
    assert test.images.features.shape == (n_test, 36, DIM)
    assert len(test.captions) == 5 * n_test
    assert (train.dataset, train.split) == ("coco_like", "train")
    assert len(train.images) == TINY["coco_like"]["train"]
    assert tier.test() is test  # loaded once per tier object


def test_unknown_dataset_is_rejected(tier: SyntheticTier) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'flickr30k'.*f30k_like, coco_like"):
        tier.test("flickr30k")


def test_synthetic_parser_finds_units(tier: SyntheticTier) -> None:
    require_tagger()
    knowledge = tier.knowledge()
    parsed = tier.test().parse(tier.parser(knowledge), progress=False)

    assert tier.synonyms() == {}
    assert sum(len(text.units) for text in parsed) > len(parsed)
    assert all(unit.noun in knowledge.objects() for text in parsed for unit in text.units)


def test_synthetic_base_similarities(tier: SyntheticTier, monkeypatch) -> None:
    sims = tier.base_similarities("f30k_like")["VSE"]

    n_test = TINY["f30k_like"]["test"]
    assert sims.shape == (n_test, 5 * n_test)
    assert np.isfinite(sims).all()
    assert metrics.evaluate(sims)["rsum"] > metrics.chance_recall(n_test)["rsum"]

    def fail(*args, **kwargs):
        raise AssertionError("the base model was trained again instead of read from the cache")

    monkeypatch.setattr(baselines, "train_vse", fail)
    np.testing.assert_array_equal(tier.base_similarities("f30k_like")["VSE"], sims)


def test_synthetic_cross_base_similarities(tier: SyntheticTier) -> None:
    cross = tier.cross_base_similarities("coco_like")

    n_test = TINY["coco_like"]["test"]
    assert list(cross) == ["VSE"]
    assert cross["VSE"].shape == (n_test, 5 * n_test)


def test_synthetic_word_groups_cover_knowledge(tier: SyntheticTier) -> None:
    groups = tier.word_groups()

    assert set(tier.knowledge().words) <= set(groups)
    assert groups["dog"] == "animals"


def test_world_is_regenerated_when_a_file_changes(tier: SyntheticTier, world: Path) -> None:
    captions = world / "f30k_like" / "test_caps.txt"
    original = captions.read_bytes()
    captions.write_bytes(original.replace(b"a", b"e", 1))

    SyntheticTier(root=world, size="tiny", dim=DIM, progress=False)

    assert captions.read_bytes() == original


def test_fingerprint_tracks_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one")
    before = fingerprint("key", path, 3)

    assert fingerprint("key", path, 3) == before
    assert fingerprint("key", path, 4) != before
    path.write_text("three")
    assert fingerprint("key", path, 3) != before


# ----------------------------------------------------------------------------- paper tier


def test_paper_tier_reports_missing_input(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MACK_CACHE", str(tmp_path / "cache"))
    paper = load_tier("paper", root=tmp_path / "paper")

    with pytest.raises(TierDataMissingError, match=r"missing input: .*vg[/\\]attributes\.json"):
        paper.knowledge()
    with pytest.raises(
        TierDataMissingError, match=r"f30k_precomp[/\\]test_ims\.npy.*docs/data\.md"
    ):
        paper.test("flickr30k")
    assert isinstance(paper, PaperTier)


def test_unknown_tier_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown tier 'flickr'"):
        load_tier("flickr")


# ----------------------------------------------------------------------------- coco-mini tier


@pytest.mark.slow
@pytest.mark.real_data
@needs_real_data
def test_coco_mini_tier() -> None:
    tier = CocoMiniTier(progress=False)
    knowledge = tier.knowledge()
    test = tier.test()

    assert len(knowledge) == 80
    assert knowledge.attributes() == set()
    assert not tier.has_attributes
    assert len(test.images) == 79
    assert len(test.captions) == 395
    assert len(test.extra["image_ids"]) == 79
    assert [len(boxes) for boxes in test.extra["boxes"]] == test.images.counts.tolist()
    groups = tier.word_groups()
    assert set(knowledge.words) <= set(groups)
    assert groups["dog"] == "animal"
    parsed = tier.parser(knowledge).parse("A man rides a bike.")
    assert [unit.noun for unit in parsed.units] == ["person", "bicycle"]
    sims = tier.base_similarities("coco-mini")["VSE"]
    assert sims.shape == (79, 395)

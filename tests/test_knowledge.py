"""Tests of mack.knowledge: streaming prototypes (eq. 1), region cap, file format."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from mack.knowledge import (
    ATTRIBUTE,
    FORMAT_VERSION,
    OBJECT,
    Knowledge,
    KnowledgeBuilder,
    KnowledgeFormatError,
    KnowledgeNotFoundError,
    build_knowledge,
    cap_annotations,
)

DIM = 8


def make_regions(seed: int, n_regions: int = 600, n_words: int = 30, dim: int = DIM):
    """Return random (words, features, types) with words in random order."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"word {i:02d}" for i in range(n_words)]
    words = [vocabulary[i] for i in rng.integers(0, n_words, n_regions)]
    features = rng.normal(size=(n_regions, dim)).astype(np.float32)
    types = [ATTRIBUTE if flag else OBJECT for flag in rng.random(n_regions) < 0.3]
    return words, features, types


def split_batches(words, features, types, sizes):
    """Yield (words, features, types) slices of the given sizes."""
    start = 0
    for size in sizes:
        stop = start + size
        yield words[start:stop], features[start:stop], types[start:stop]
        start = stop


def build(words, features, types, sizes=None, seed=0) -> Knowledge:
    builder = KnowledgeBuilder(features.shape[1], seed=seed)
    for batch in split_batches(words, features, types, sizes or [len(words)]):
        builder.add(*batch)
    return builder.build()


def test_streaming_mean_equals_numpy_mean():
    words, features, types = make_regions(seed=0)
    knowledge = build(words, features, types, sizes=[1, 99, 250, 0, 250])

    word_array = np.array(words)
    assert knowledge.words == sorted(set(words))
    for row, word in enumerate(knowledge.words):
        expected = features[word_array == word].astype(np.float64).mean(axis=0)
        np.testing.assert_array_max_ulp(knowledge.prototypes[row], expected.astype(np.float32), 1)
        assert knowledge.counts[row] == np.sum(word_array == word)
    assert knowledge.prototypes.dtype == np.float32
    assert knowledge.counts.dtype == np.int64


def test_streaming_mean_accurate_with_large_offset():
    rng = np.random.default_rng(3)
    features = (1000.0 + rng.normal(size=(20_000, 4))).astype(np.float32)
    words = ["dog"] * len(features)
    knowledge = build(words, features, [OBJECT] * len(words), sizes=[5000] * 4)

    expected = features.astype(np.float64).mean(axis=0)
    np.testing.assert_array_max_ulp(knowledge.prototypes[0], expected.astype(np.float32), 1)


def test_batch_order_does_not_change_prototypes():
    words, features, types = make_regions(seed=2)
    forward = build(words, features, types, sizes=[100] * 6)
    permutation = np.random.default_rng(5).permutation(len(words))
    shuffled = build(
        [words[i] for i in permutation], features[permutation], [types[i] for i in permutation]
    )

    assert forward.words == shuffled.words
    np.testing.assert_array_max_ulp(forward.prototypes, shuffled.prototypes, 1)
    np.testing.assert_array_equal(forward.counts, shuffled.counts)
    assert forward.types == shuffled.types


def test_type_is_majority_role_ties_object():
    features = np.zeros((7, 2), dtype=np.float32)
    words = ["red", "red", "red", "round", "round", "dog", "dog"]
    types = [ATTRIBUTE, ATTRIBUTE, OBJECT, ATTRIBUTE, OBJECT, OBJECT, OBJECT]
    knowledge = build(words, features, types)

    assert dict(zip(knowledge.words, knowledge.types, strict=True)) == {
        "dog": OBJECT,
        "red": ATTRIBUTE,
        "round": OBJECT,
    }
    assert knowledge.objects() == {"dog", "round"}
    assert knowledge.attributes() == {"red"}
    assert knowledge.index == {"dog": 0, "red": 1, "round": 2}


def test_random_regions_are_regions_of_word():
    words, features, types = make_regions(seed=4)
    knowledge = build(words, features, types, sizes=[50] * 12)

    word_array = np.array(words)
    for row, word in enumerate(knowledge.words):
        own_regions = features[word_array == word]
        matches = np.all(own_regions == knowledge.random_regions[row], axis=1)
        assert matches.any(), f"random region of {word!r} is not one of its regions"


def test_random_regions_deterministic_per_seed():
    words, features, types = make_regions(seed=4)
    first = build(words, features, types, sizes=[200] * 3, seed=7)
    again = build(words, features, types, sizes=[200] * 3, seed=7)
    other = build(words, features, types, sizes=[200] * 3, seed=8)

    np.testing.assert_array_equal(first.random_regions, again.random_regions)
    assert not np.array_equal(first.random_regions, other.random_regions)
    assert first.provenance["random_region_seed"] == 7


def test_random_region_draw_is_uniform():
    # 2000 words with 4 regions each, region j has feature value j; each word draws independently.
    n_words = 2000
    vocabulary = [f"word {i:04d}" for i in range(n_words)]
    builder = KnowledgeBuilder(1, seed=0)
    builder.add(vocabulary, np.zeros((n_words, 1), dtype=np.float32), [OBJECT] * n_words)
    later = np.repeat(np.arange(1, 4, dtype=np.float32), n_words)[:, None]
    builder.add(vocabulary * 3, later, [OBJECT] * 3 * n_words)
    picks = np.bincount(builder.build().random_regions[:, 0].astype(np.int64), minlength=4)

    expected = n_words / 4
    chi_square = float(np.sum((picks - expected) ** 2 / expected))
    assert chi_square < 16.3, f"picks per region {picks.tolist()} are not uniform"  # df 3, p 0.001


def test_from_knowledge_equals_single_build():
    words, features, types = make_regions(seed=6, n_regions=800, n_words=40)
    is_old_word = np.array([word < "word 30" for word in words])
    taken = np.flatnonzero(is_old_word)[:300]
    remaining = np.setdiff1d(np.arange(len(words)), taken)
    start = build([words[i] for i in taken], features[taken], [types[i] for i in taken])
    assert len(start) == 30  # "word 30" .. "word 39" arrive later as new words

    builder = KnowledgeBuilder.from_knowledge(start, seed=1)
    builder.add([words[i] for i in remaining], features[remaining], [types[i] for i in remaining])
    extended = builder.build()
    all_at_once = build(words, features, types)

    assert extended.words == all_at_once.words
    np.testing.assert_allclose(extended.prototypes, all_at_once.prototypes, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(extended.counts, all_at_once.counts)
    assert extended.provenance["based_on"]["n_words"] == 30


def test_from_knowledge_keeps_types_and_random_regions():
    words, features, types = make_regions(seed=8)
    start = build(words, features, types)
    builder = KnowledgeBuilder.from_knowledge(start)
    extended = builder.build()

    assert extended.words == start.words
    assert extended.types == start.types
    np.testing.assert_array_equal(extended.random_regions, start.random_regions)
    np.testing.assert_allclose(extended.prototypes, start.prototypes, rtol=1e-6, atol=1e-7)


def test_from_knowledge_without_random_regions():
    words, features, types = make_regions(seed=8)
    start = build(words, features, types)
    start.random_regions = None
    builder = KnowledgeBuilder.from_knowledge(start)
    builder.add(["new word"], np.ones((1, DIM), dtype=np.float32), [OBJECT])
    extended = builder.build()

    assert extended.random_regions is None
    assert "new word" in extended.index


def test_build_knowledge_matches_builder():
    words, features, types = make_regions(seed=9)
    batches = list(split_batches(words, features, types, [150] * 4))
    knowledge = build_knowledge(batches, DIM, seed=3, provenance={"source": "test"}, progress=False)
    expected = build(words, features, types, sizes=[150] * 4, seed=3)

    np.testing.assert_array_equal(knowledge.prototypes, expected.prototypes)
    np.testing.assert_array_equal(knowledge.random_regions, expected.random_regions)
    assert knowledge.provenance["source"] == "test"
    assert knowledge.provenance["n_annotations"] == len(words)


def test_add_rejects_bad_batches():
    builder = KnowledgeBuilder(DIM)
    features = np.zeros((2, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        builder.add(["dog"], features, [OBJECT])
    with pytest.raises(ValueError, match="'furry'"):
        builder.add(["dog", "cat"], features, [OBJECT, "furry"])
    with pytest.raises(ValueError, match="lower case"):
        builder.add(["Dog", "cat"], features, [OBJECT, OBJECT])

    features[1, 3] = np.nan
    with pytest.raises(ValueError, match="row 1 .*'cat'"):
        builder.add(["dog", "cat"], features, [OBJECT, OBJECT])
    assert len(builder) == 0


def test_cap_keeps_min_of_cap_and_count():
    annotations = {"dog": list(range(5)), "cat": ["a", "b"], "red": [10, 11, 12]}
    kept, share_kept = cap_annotations(annotations, region_cap=3, seed=0)

    assert {word: len(ids) for word, ids in kept.items()} == {"dog": 3, "cat": 2, "red": 3}
    assert share_kept == pytest.approx(8 / 10)
    assert kept["cat"] == ["a", "b"]
    assert kept["red"] == [10, 11, 12]
    assert kept["dog"] == sorted(set(kept["dog"]))
    assert set(kept["dog"]) <= set(range(5))


def test_cap_none_keeps_everything():
    annotations = {"dog": list(range(5)), "cat": ["a", "b"]}
    kept, share_kept = cap_annotations(annotations, region_cap=None, seed=0)

    assert kept == annotations
    assert share_kept == 1.0
    assert cap_annotations({}, region_cap=3, seed=0) == ({}, 1.0)


def test_cap_sample_depends_on_seed_only():
    annotations = {f"word {i}": list(range(100 + i)) for i in range(20)}
    kept, _ = cap_annotations(annotations, region_cap=10, seed=1)
    again, _ = cap_annotations(dict(reversed(list(annotations.items()))), region_cap=10, seed=1)
    other, _ = cap_annotations(annotations, region_cap=10, seed=2)
    alone, _ = cap_annotations({"word 3": annotations["word 3"]}, region_cap=10, seed=1)

    assert kept == again
    assert kept != other
    assert alone["word 3"] == kept["word 3"]
    assert all(kept[word] != other[word] for word in annotations)


@pytest.mark.parametrize("region_cap", [0, -1, 2.5, True])
def test_cap_rejects_invalid_cap(region_cap):
    with pytest.raises(ValueError, match="region_cap"):
        cap_annotations({"dog": [1, 2]}, region_cap=region_cap, seed=0)


def test_save_load_round_trip_is_exact(tmp_path):
    words, features, types = make_regions(seed=10)
    knowledge = build(words, features, types)
    knowledge.provenance.update(source="test", region_cap=None, seed=3, share_kept=0.5)
    path = tmp_path / "knowledge.npz"
    knowledge.save(path)
    loaded = Knowledge.load(path)

    assert loaded.words == knowledge.words
    assert loaded.types == knowledge.types
    assert loaded.provenance == knowledge.provenance
    assert loaded.prototypes.dtype == np.float32
    assert loaded.prototypes.tobytes() == knowledge.prototypes.tobytes()
    assert loaded.random_regions.tobytes() == knowledge.random_regions.tobytes()
    assert loaded.counts.tobytes() == knowledge.counts.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["knowledge.npz"]


def test_save_load_without_random_regions(tmp_path):
    knowledge = Knowledge(
        ["tennis racket"], [OBJECT], np.ones((1, 3), dtype=np.float32), np.array([2])
    )
    knowledge.save(tmp_path / "k.npz")
    loaded = Knowledge.load(tmp_path / "k.npz")

    assert loaded.random_regions is None
    assert loaded.words == ["tennis racket"]
    assert loaded.dim == 3
    assert len(loaded) == 1


def test_failed_save_keeps_old_file(tmp_path):
    words, features, types = make_regions(seed=10)
    knowledge = build(words, features, types)
    path = tmp_path / "knowledge.npz"
    knowledge.save(path)
    knowledge.provenance["bad"] = object()

    with pytest.raises(ValueError, match="JSON"):
        knowledge.save(path)
    assert Knowledge.load(path).words == knowledge.words


def test_load_truncated_file_raises(tmp_path):
    words, features, types = make_regions(seed=10)
    path = tmp_path / "truncated.npz"
    build(words, features, types).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(KnowledgeFormatError, match="truncated.npz"):
        Knowledge.load(path)


def test_load_corrupt_member_raises(tmp_path):
    words, features, types = make_regions(seed=10)
    path = tmp_path / "corrupt.npz"
    build(words, features, types).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(KnowledgeFormatError, match="corrupt.npz"):
        Knowledge.load(path)


def test_load_wrong_version_raises(tmp_path):
    words, features, types = make_regions(seed=10)
    path = tmp_path / "old.npz"
    build(words, features, types).save(path)
    with np.load(path) as npz:
        fields = dict(npz)
    fields["format_version"] = np.array(FORMAT_VERSION + 1)
    np.savez(path, **fields)

    with pytest.raises(KnowledgeFormatError, match=rf"old.npz.*version {FORMAT_VERSION + 1}"):
        Knowledge.load(path)


def test_load_missing_field_and_bad_shape_raise(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, format_version=np.array(FORMAT_VERSION), words=np.array(["dog"]))
    with pytest.raises(KnowledgeFormatError, match=r"partial.npz.*missing"):
        Knowledge.load(path)

    np.savez(
        path,
        format_version=np.array(FORMAT_VERSION),
        words=np.array(["dog", "cat"]),
        types=np.array([OBJECT, OBJECT]),
        prototypes=np.zeros((3, 4), dtype=np.float32),
        counts=np.ones(2, dtype=np.int64),
        provenance=np.array(json.dumps({})),
    )
    with pytest.raises(KnowledgeFormatError, match=r"partial.npz.*2 words but 3 prototype rows"):
        Knowledge.load(path)


def test_load_missing_or_foreign_file_raises(tmp_path):
    with pytest.raises(KnowledgeNotFoundError, match="absent.npz"):
        Knowledge.load(tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError):
        Knowledge.load(tmp_path / "absent.npz")

    (tmp_path / "text.npz").write_text("not a zip file\n")
    with pytest.raises(KnowledgeFormatError, match="text.npz"):
        Knowledge.load(tmp_path / "text.npz")

    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(KnowledgeFormatError, match="array.npy.*single .npy"):
        Knowledge.load(tmp_path / "array.npy")

    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(KnowledgeFormatError, match="empty.npz.*format_version"):
        Knowledge.load(tmp_path / "empty.npz")


def test_transformed_equals_prototypes_times_w_transpose():
    words, features, types = make_regions(seed=11)
    knowledge = build(words, features, types)
    W = np.random.default_rng(0).normal(size=(DIM, DIM)).astype(np.float32)
    fine_tuned = knowledge.transformed(W)

    expected = knowledge.prototypes.astype(np.float64) @ W.T.astype(np.float64)
    np.testing.assert_allclose(fine_tuned.prototypes, expected, rtol=1e-5, atol=1e-5)
    expected_random = knowledge.random_regions.astype(np.float64) @ W.T.astype(np.float64)
    np.testing.assert_allclose(fine_tuned.random_regions, expected_random, rtol=1e-5, atol=1e-5)
    assert fine_tuned.words == knowledge.words
    assert fine_tuned.provenance["transforms"][0]["shape"] == [DIM, DIM]
    assert "transforms" not in knowledge.provenance

    with pytest.raises(ValueError, match="shape"):
        knowledge.transformed(np.eye(DIM + 1))


def test_subset_keeps_requested_rows():
    words, features, types = make_regions(seed=12)
    knowledge = build(words, features, types)
    chosen = [knowledge.words[5], knowledge.words[2]]
    subset = knowledge.subset(chosen)

    assert subset.words == chosen
    np.testing.assert_array_equal(subset.prototypes, knowledge.prototypes[[5, 2]])
    np.testing.assert_array_equal(subset.counts, knowledge.counts[[5, 2]])
    np.testing.assert_array_equal(subset.random_regions, knowledge.random_regions[[5, 2]])
    with pytest.raises(ValueError, match="not in the knowledge"):
        knowledge.subset(["unicorn"])


def test_knowledge_rejects_inconsistent_fields():
    prototypes = np.zeros((2, 3), dtype=np.float32)
    counts = np.ones(2)
    with pytest.raises(ValueError, match="'dog' appears more than once"):
        Knowledge(["dog", "dog"], [OBJECT, OBJECT], prototypes, counts)
    with pytest.raises(ValueError, match="types"):
        Knowledge(["dog", "cat"], [OBJECT, "noun"], prototypes, counts)
    with pytest.raises(ValueError, match="NaN"):
        Knowledge(["dog", "cat"], [OBJECT, OBJECT], np.full((2, 3), np.nan), counts)
    with pytest.raises(ValueError, match="random_regions"):
        Knowledge(["dog", "cat"], [OBJECT, OBJECT], prototypes, counts, {}, np.zeros((1, 3)))

"""Tests of the VSE++ base model: loss against a loop, learning on a toy paired world, determinism, I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mack.baselines import (
    PAD,
    UNK,
    VSEConfig,
    VSEFormatError,
    VSEModel,
    build_vocabulary,
    encode_captions,
    pool_regions,
    tokenize,
    train_vse,
    vse_loss,
)
from mack.matching import ImageRegions
from mack.metrics import chance_recall, evaluate

OBJECTS = ["dog", "cat", "car", "tree", "boat", "horse", "chair", "cake"]
COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
FILLERS = ["a", "the", "photo", "of", "with", "near", "some"]
FEATURE_DIM = 32
FAST = VSEConfig(embed_dim=32, word_dim=32, epochs=8, batch_size=64, lr=1e-2, seed=0)


def toy_world(n_images: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Build images (n_images, 6, FEATURE_DIM) and 5 captions each, both tied to an object and a colour.

    Regions 0-1 are the object's centre plus noise, regions 2-3 the colour's centre plus noise, and
    regions 4-5 pure noise. Every caption names the object and the colour among random filler words.
    """
    centres = np.random.default_rng(1234).normal(size=(len(OBJECTS) + len(COLOURS), FEATURE_DIM))
    rng = np.random.default_rng(seed)
    objects = rng.integers(0, len(OBJECTS), size=n_images)
    colours = rng.integers(0, len(COLOURS), size=n_images)

    images = rng.normal(scale=0.5, size=(n_images, 6, FEATURE_DIM))
    images[:, 0:2] += centres[objects][:, None, :]
    images[:, 2:4] += centres[len(OBJECTS) + colours][:, None, :]

    captions = []
    for i in range(n_images):
        for _ in range(5):
            words = [*rng.choice(FILLERS, size=3), COLOURS[colours[i]], OBJECTS[objects[i]]]
            captions.append(" ".join(words))
    return images.astype(np.float32), captions


@dataclass
class ImageRegionsLike:
    features: np.ndarray
    counts: np.ndarray


@pytest.fixture(scope="module")
def trained() -> tuple[VSEModel, tuple[np.ndarray, list[str]]]:
    train = toy_world(120, seed=0)
    return train_vse(*train, FAST, progress=False), train


def brute_force_loss(images, texts, margin, max_violation, image_ids):
    """Compute the VSE hinge loss pair by pair with Python loops."""
    n = len(images)
    total = 0.0
    for b in range(n):
        positive = float(images[b] @ texts[b])
        image_to_text, text_to_image = [], []
        for c in range(n):
            if image_ids[c] == image_ids[b]:
                continue
            image_to_text.append(max(0.0, margin + float(images[b] @ texts[c]) - positive))
            text_to_image.append(max(0.0, margin + float(images[c] @ texts[b]) - positive))
        if max_violation:
            total += max(image_to_text, default=0.0) + max(text_to_image, default=0.0)
        else:
            total += sum(image_to_text) + sum(text_to_image)
    return total


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("image_ids", [None, [0, 0, 1, 2]])
def test_vse_loss_matches_loop(max_violation, image_ids):
    generator = torch.Generator().manual_seed(7)
    images = torch.nn.functional.normalize(torch.randn(4, 5, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(4, 5, generator=generator), dim=1)
    ids = torch.arange(4) if image_ids is None else torch.tensor(image_ids)

    loss = vse_loss(
        images,
        texts,
        margin=0.5,
        max_violation=max_violation,
        image_ids=None if image_ids is None else ids,
    )
    expected = brute_force_loss(images.numpy(), texts.numpy(), 0.5, max_violation, ids.tolist())

    assert expected > 0
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_vse_loss_hand_worked_case():
    # Two pairs in 1-d: s = [[1, -1], [-1, 1]] so no negative is within the margin of 0.2.
    images = torch.tensor([[1.0], [-1.0]])
    texts = torch.tensor([[1.0], [-1.0]])
    assert float(vse_loss(images, texts, margin=0.2)) == 0.0

    # Swapped texts: every positive is -1 and every negative +1, so each term is 0.2 + 1 + 1.
    swapped = torch.tensor([[-1.0], [1.0]])
    assert float(vse_loss(images, swapped, margin=0.2)) == pytest.approx(4 * 2.2)


def test_training_lowers_loss_and_recalls(trained):
    model, train = trained
    untrained = train_vse(*train, VSEConfig(**{**FAST.__dict__, "epochs": 0}), progress=False)
    test_images, test_captions = toy_world(40, seed=1)

    assert model.mean_loss(*train) < 0.5 * untrained.mean_loss(*train)
    assert model.history[-1] < model.history[0]
    assert model.mean_loss(test_images, test_captions) < untrained.mean_loss(
        test_images, test_captions
    )

    sims = model.similarity(test_images, test_captions)
    chance = chance_recall(len(test_images))
    assert sims.shape == (40, 200)
    assert sims.dtype == np.float32
    result = evaluate(sims)
    assert result["text_to_image"]["r1"] > 10 * chance["text_to_image"]["r1"]
    assert result["image_to_text"]["r1"] > 5 * chance["image_to_text"]["r1"]
    untrained_result = evaluate(untrained.similarity(test_images, test_captions))
    assert untrained_result["text_to_image"]["r1"] < 5 * chance["text_to_image"]["r1"]


def test_same_seed_same_similarities(trained):
    model, train = trained
    test_images, test_captions = toy_world(10, seed=2)

    again = train_vse(*train, FAST, progress=False)
    other_seed = train_vse(*train, VSEConfig(**{**FAST.__dict__, "seed": 1}), progress=False)
    sims = model.similarity(test_images, test_captions)

    np.testing.assert_array_equal(again.similarity(test_images, test_captions), sims)
    assert not np.array_equal(other_seed.similarity(test_images, test_captions), sims)


def test_training_keeps_global_torch_state(trained):
    _, train = trained
    torch.manual_seed(99)
    expected = torch.rand(3)
    threads = torch.get_num_threads()
    torch.manual_seed(99)
    train_vse(*train, VSEConfig(**{**FAST.__dict__, "epochs": 1}), progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_save_load_round_trip(trained, tmp_path):
    model, _ = trained
    test_images, test_captions = toy_world(10, seed=3)

    model.save(tmp_path / "vse")
    loaded = VSEModel.load(tmp_path / "vse")

    assert loaded.vocabulary == model.vocabulary
    assert loaded.config == model.config
    assert loaded.history == model.history
    np.testing.assert_array_equal(
        loaded.similarity(test_images, test_captions), model.similarity(test_images, test_captions)
    )
    assert not list((tmp_path / "vse").glob("*.tmp"))


def test_load_rejects_mismatched_state(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "vse")
    state = tmp_path / "vse" / "vse_state.pt"
    state.write_bytes(state.read_bytes()[:-10])

    with pytest.raises(VSEFormatError, match="sha256"):
        VSEModel.load(tmp_path / "vse")


def test_load_rejects_missing_and_bad_meta(trained, tmp_path):
    with pytest.raises(VSEFormatError, match="not found"):
        VSEModel.load(tmp_path / "nothing")

    model, _ = trained
    model.save(tmp_path / "vse")
    (tmp_path / "vse" / "vse.json").write_text('{"format_version": 99}')
    with pytest.raises(VSEFormatError, match="format_version 99"):
        VSEModel.load(tmp_path / "vse")

    (tmp_path / "vse" / "vse.json").write_text("{not json")
    with pytest.raises(VSEFormatError, match="invalid JSON"):
        VSEModel.load(tmp_path / "vse")


def test_unknown_words_map_to_unk():
    vocabulary = build_vocabulary(["a dog runs", "a dog sits", "a cat"], min_word_count=2)
    index = {word: i for i, word in enumerate(vocabulary)}

    assert vocabulary == [PAD, UNK, "a", "dog"]
    tokens = encode_captions(["A zebra dog!", "", "cat"], index)
    assert tokens.tolist() == [
        [index["a"], index[UNK], index["dog"]],
        [index[UNK], index[PAD], index[PAD]],
        [index[UNK], index[PAD], index[PAD]],
    ]


def test_unknown_words_embed_as_unk(trained):
    model, _ = trained
    unknown = model.encode_texts(["red zebra dog", "red giraffe dog"])
    np.testing.assert_array_equal(unknown[0], unknown[1])


def test_tokenize_lowercases_and_splits():
    assert tokenize("A man's RED shirt, 2 dogs.") == ["a", "man", "s", "red", "shirt", "2", "dogs"]


def test_caption_count_must_be_five_per_image():
    images, captions = toy_world(4, seed=0)
    with pytest.raises(ValueError, match="expected 5 per image, 20 for 4 images, got 19"):
        train_vse(images, captions[:-1], FAST, progress=False)


def test_non_string_caption_rejected():
    images, captions = toy_world(2, seed=0)
    captions[3] = None
    with pytest.raises(TypeError, match=r"captions\[3\]"):
        train_vse(images, captions, FAST, progress=False)


def test_pool_regions_respects_padding():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 4, 5)).astype(np.float32)
    counts = np.array([4, 2, 0])
    features[1, 2:] = 1e6  # padding rows must not leak into the mean
    regions = ImageRegions(features, counts)

    pooled = pool_regions(regions, chunk_size=2)

    for i, count in enumerate(counts):
        expected = (
            np.zeros(5) if count == 0 else features[i, :count].astype(np.float64).mean(axis=0)
        )
        np.testing.assert_allclose(pooled[i], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool_regions(features), features.mean(axis=1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (np.array([4, 5, 1]), r"counts\[1\] = 5 is outside 0..4"),
        (np.array([4, 4]), r"expected \(3,\)"),
    ],
)
def test_pool_regions_rejects_bad_counts(counts, message):
    # A plain object: ImageRegions itself already rejects these counts on construction.
    regions = ImageRegionsLike(np.zeros((3, 4, 5), dtype=np.float32), counts)
    with pytest.raises(ValueError, match=message):
        pool_regions(regions)


def test_pool_regions_rejects_nan_and_wrong_shape():
    features = np.zeros((3, 4, 5), dtype=np.float32)
    features[2, 1, 0] = np.nan
    with pytest.raises(ValueError, match="image index 2"):
        pool_regions(features)
    with pytest.raises(ValueError, match="n_images, n_regions, feature_dim"):
        pool_regions(np.zeros((3, 5), dtype=np.float32))


def test_similarity_rejects_other_feature_dim(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="feature_dim 7 does not match"):
        model.similarity(np.zeros((2, 3, 7), dtype=np.float32), ["a dog"])


@pytest.mark.parametrize(
    ("name", "value"), [("epochs", -1), ("lr", 0.0), ("batch_size", 0), ("margin", -0.1)]
)
def test_config_rejects_invalid_values(name, value):
    with pytest.raises(ValueError, match=name):
        VSEConfig(**{name: value})


def test_training_ignores_padding_rows():
    images, captions = toy_world(20, seed=4)
    padded = np.concatenate([images, np.full((20, 2, FEATURE_DIM), 1e3, np.float32)], axis=1)
    regions = ImageRegions(padded, np.full(20, images.shape[1]))
    config = VSEConfig(**{**FAST.__dict__, "epochs": 2})

    from_regions = train_vse(regions, captions, config, progress=False)
    from_dense = train_vse(images, captions, config, progress=False)

    np.testing.assert_array_equal(
        from_regions.similarity(regions, captions), from_dense.similarity(images, captions)
    )


def test_warmup_epochs_sum_over_negatives(trained):
    model, train = trained
    # The first epoch sums the hinge over all negatives of a 64-pair batch, the rest keep one.
    assert model.config.warmup_epochs == 1
    assert model.history[0] > 5 * max(model.history[1:])
    no_warmup = train_vse(
        *train, VSEConfig(**{**FAST.__dict__, "warmup_epochs": 0}), progress=False
    )
    assert no_warmup.history[0] < model.history[0]

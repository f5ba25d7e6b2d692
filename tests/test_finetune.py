"""Tests of mack.finetune: the cycle loss of eqs. 2-3, region selection, training, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mack import finetune as ft
from mack.knowledge import OBJECT, Knowledge
from mack.matching import ImageRegions, score_matrix
from mack.metrics import evaluate
from mack.text import ParsedText, Unit

# ----------------------------------------------------------------------------------------------
# A small world where fine-tuning has something to learn
# ----------------------------------------------------------------------------------------------


def make_world(seed=0, n_train=96, n_test=40, dim=32, n_concepts=24):
    """Build pretrained knowledge and a distorted target domain with captioned images.

    Prototypes are concept centres drawn around 6 cluster centres. A target region is its concept's
    centre plus three terms: a shift shared by the whole domain, large noise in an 8-dimensional
    nuisance subspace, and small noise. Every image also has one background region (shift and
    nuisance only). A W that suppresses the shift and the nuisance subspace makes regions match
    their words again.
    Each image shows 3 concepts; each of its 5 captions names 2 of them.
    """
    rng = np.random.default_rng(seed)
    groups = rng.normal(0, 1, (6, dim))
    centres = groups[np.arange(n_concepts) % 6] + 0.7 * rng.normal(0, 1, (n_concepts, dim))
    words = [f"thing{k:02d}" for k in range(n_concepts)]
    knowledge = Knowledge(
        words=words,
        types=[OBJECT] * n_concepts,
        prototypes=centres + 0.05 * rng.normal(0, 1, centres.shape),
        counts=np.full(n_concepts, 10),
        provenance={"source": "test world"},
    )
    nuisance_basis = np.linalg.qr(rng.normal(0, 1, (dim, 8)))[0]  # (dim, 8) orthonormal
    shift = 3.0 * rng.normal(0, 1, dim)

    def nuisance(n):
        return (
            shift + rng.normal(0, 3.0, (n, 8)) @ nuisance_basis.T + 0.3 * rng.normal(0, 1, (n, dim))
        )

    def split(n_images):
        features, texts = [], []
        for _ in range(n_images):
            shown = rng.choice(n_concepts, 3, replace=False)
            regions = np.concatenate([centres[shown] + nuisance(3), nuisance(1)])
            features.append(regions.astype(np.float32))
            for _ in range(5):
                named = rng.choice(shown, 2, replace=False)
                units = [Unit(words[k]) for k in named]
                texts.append(ParsedText(" and ".join(words[k] for k in named), units))
        return ImageRegions.from_dense(np.stack(features)), texts

    return knowledge, split(n_train), split(n_test)


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch on one thread: these tensors are tiny and thread start-up would dominate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world():
    return make_world()


FAST = ft.FinetuneConfig(batch_images=16, batch_texts=16, lr=2e-3, epochs=4, seed=3)


# ----------------------------------------------------------------------------------------------
# The loss against a loop implementation, and its gradient
# ----------------------------------------------------------------------------------------------


def loop_cycle_loss(W, V, R, normalize, temperature):
    """Eqs. 2-3 written with explicit loops over words and regions, in float64."""
    W, V, R = (np.asarray(x, dtype=np.float64) for x in (W, V, R))

    def unit_columns(X):
        return X / np.linalg.norm(X, axis=0, keepdims=True)

    if normalize == "features":
        V, R = unit_columns(V), unit_columns(R)
    A, B = W @ V, W @ R
    if normalize == "cosine":
        A, B = unit_columns(A), unit_columns(B)

    def direction(queries, keys):
        n_queries, n_keys = queries.shape[1], keys.shape[1]
        total = 0.0
        for i in range(n_queries):
            s = [float(queries[:, i] @ keys[:, j]) / temperature for j in range(n_keys)]
            top = max(s)
            weights = [math.exp(value - top) for value in s]
            weights = [w / sum(weights) for w in weights]
            rebuilt = sum(weights[j] * keys[:, j] for j in range(n_keys))
            logits = [float(rebuilt @ queries[:, m]) / temperature for m in range(n_queries)]
            top = max(logits)
            log_norm = top + math.log(sum(math.exp(value - top) for value in logits))
            total += log_norm - logits[i]
        return total / n_queries

    return direction(A, B), direction(B, A)


@pytest.mark.parametrize(
    ("normalize", "temperature"),
    [("none", 1.0), ("none", 0.5), ("features", 1.0), ("cosine", 1.0), ("cosine", 0.05)],
)
def test_cycle_loss_matches_loops(normalize, temperature):
    rng = np.random.default_rng(1)
    W = np.eye(6) + 0.3 * rng.normal(size=(6, 6))
    V = rng.normal(size=(6, 4))
    R = rng.normal(size=(6, 5))
    expected_words, expected_regions = loop_cycle_loss(W, V, R, normalize, temperature)

    tensors = [torch.tensor(x, dtype=torch.float64) for x in (W, V, R)]
    loss_words, loss_regions = ft.cycle_loss(*tensors, normalize=normalize, temperature=temperature)

    assert float(loss_words) == pytest.approx(expected_words, rel=1e-10)
    assert float(loss_regions) == pytest.approx(expected_regions, rel=1e-10)


def test_cycle_loss_hand_case():
    # Two words that each equal one region exactly; a third region is far from both.
    V = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    W = torch.eye(2, dtype=torch.float64)

    loss_words, _ = ft.cycle_loss(W, V, R)

    # Word 0: S = [1, 0, -1], softmax p; V_hat_0 = p0 e0 + p1 e1 - p2 (e0 + e1).
    p = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
    logits = np.array([p[0] - p[2], p[1] - p[2]])  # V_hat_0 . v_0, V_hat_0 . v_1
    expected = np.log(np.exp(logits).sum()) - logits[0]  # word 1 is the mirror image of word 0
    assert float(loss_words) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("normalize", ft.NORMALIZATIONS)
def test_cycle_loss_gradient(normalize):
    rng = np.random.default_rng(2)
    inputs = [
        torch.tensor(np.eye(5) + 0.2 * rng.normal(size=(5, 5)), requires_grad=True),
        torch.tensor(0.5 * rng.normal(size=(5, 3)), requires_grad=True),
        torch.tensor(0.5 * rng.normal(size=(5, 4)), requires_grad=True),
    ]

    def total(W, V, R):
        loss_words, loss_regions = ft.cycle_loss(W, V, R, normalize=normalize, temperature=0.7)
        return loss_words + loss_regions

    assert torch.autograd.gradcheck(total, inputs, eps=1e-6, atol=1e-6)


def test_cycle_loss_rejects_bad_shapes():
    with pytest.raises(ft.FinetuneError, match="shapes do not match"):
        ft.cycle_loss(torch.eye(4), torch.ones(3, 2), torch.ones(4, 2))
    with pytest.raises(ft.FinetuneError, match="normalize"):
        ft.cycle_loss(torch.eye(4), torch.ones(4, 2), torch.ones(4, 2), normalize="l2")


def test_literal_loss_saturates_at_real_scale():
    # Non-negative, half-zero features of norm ~20, like pooled CNN region features.
    rng = np.random.default_rng(3)
    V = torch.tensor(np.maximum(rng.normal(0, 1.8, (256, 40)), 0), dtype=torch.float32)
    R = torch.tensor(np.maximum(rng.normal(0, 1.8, (256, 60)), 0), dtype=torch.float32)
    W = torch.eye(256)
    assert 15 < float(R.norm(dim=0).mean()) < 25

    literal = ft.cycle_terms(W, V, R, normalize="none", temperature=1.0)
    cosine_plain = ft.cycle_terms(W, V, R, normalize="cosine", temperature=1.0)
    cosine_default = ft.cycle_terms(W, V, R, normalize="cosine", temperature=0.05)

    assert literal.attention_max_words > 0.9  # one-hot rows
    assert cosine_plain.attention_max_words < 2 / 60  # almost uniform over 60 regions
    assert 2 / 60 < cosine_default.attention_max_words < 0.9


# ----------------------------------------------------------------------------------------------
# Region assignment and de-duplication
# ----------------------------------------------------------------------------------------------


def test_deduplicate_regions_hand_case():
    concepts = np.array([2, 0, 2, -1, 0, 5, 2, 0])
    scores = np.array([0.5, 0.9, 0.7, 0.99, 0.9, 0.1, 0.6, 0.3])

    kept = ft.deduplicate_regions(concepts, scores)

    # concept 0: regions 1 and 4 tie at 0.9, the earlier wins; concept 2: region 2 (0.7);
    # concept 5: region 5; region 3 has no concept.
    assert kept.tolist() == [1, 2, 5]


def test_deduplicate_regions_empty_and_mismatched():
    assert ft.deduplicate_regions(np.array([-1, -1]), np.array([0.0, 1.0])).size == 0
    with pytest.raises(ft.FinetuneError, match="same length"):
        ft.deduplicate_regions(np.array([0, 1]), np.array([0.5]))


def assignment_by_loops(knowledge, images):
    """Best concept and cosine of every valid region, one region at a time."""
    n_images, max_regions, _ = images.features.shape
    concepts = np.full((n_images, max_regions), -1)
    scores = np.full((n_images, max_regions), -np.inf)
    prototypes = knowledge.prototypes.astype(np.float64)
    for i in range(n_images):
        for j in range(images.counts[i]):
            region = images.features[i, j].astype(np.float64)
            if not region.any():
                continue
            cosines = [
                region @ p / (np.linalg.norm(region) * np.linalg.norm(p)) for p in prototypes
            ]
            concepts[i, j] = int(np.argmax(cosines))
            scores[i, j] = max(cosines)
    return concepts, scores


def test_assign_regions_matches_loops(world):
    knowledge, (images, _), _ = world
    features = images.features.copy()
    features[1, 2] = 0.0  # an all-zero region gets no concept
    padded = ImageRegions(features, np.array([4, 3] + [4] * (len(features) - 2)))

    assignment = ft.assign_regions(knowledge, padded, progress=False)
    concepts, scores = assignment_by_loops(knowledge, padded)

    np.testing.assert_array_equal(assignment.concepts, concepts)
    np.testing.assert_allclose(assignment.scores, scores, rtol=1e-5)
    assert assignment.concepts[1, 3] == -1  # padding
    assert assignment.concepts[1, 2] == -1  # zero region


def test_assign_regions_rejects_nan_and_wrong_dim(world):
    knowledge, (images, _), _ = world
    features = images.features.copy()
    features[5, 1, 0] = np.nan
    with pytest.raises(ft.FinetuneError, match="image 5, region 1"):
        ft.assign_regions(knowledge, ImageRegions.from_dense(features), progress=False)
    narrow = ImageRegions.from_dense(images.features[:, :, :10])
    with pytest.raises(ft.FinetuneError, match="10 dimensions"):
        ft.assign_regions(knowledge, narrow, progress=False)


def test_assign_regions_cache(world, tmp_path, monkeypatch):
    knowledge, (images, _), (test_images, _) = world
    first = ft.assign_regions(knowledge, images, tmp_path, progress=False)
    files = list(tmp_path.glob("region_assignment_*.npz"))
    assert len(files) == 1

    def fail(*args):
        raise AssertionError("the cached assignment should have been read")

    monkeypatch.setattr(ft, "_compute_assignment", fail)
    second = ft.assign_regions(knowledge, images, tmp_path, progress=False)
    np.testing.assert_array_equal(second.concepts, first.concepts)
    np.testing.assert_array_equal(second.scores, first.scores)
    monkeypatch.undo()

    ft.assign_regions(knowledge, test_images, tmp_path, progress=False)  # other images
    other_knowledge = knowledge.subset(knowledge.words[:10])
    ft.assign_regions(other_knowledge, images, tmp_path, progress=False)  # other knowledge
    assert len(list(tmp_path.glob("region_assignment_*.npz"))) == 3


def test_corrupt_assignment_cache_recomputed(world, tmp_path):
    knowledge, (images, _), _ = world
    first = ft.assign_regions(knowledge, images, tmp_path, progress=False)
    path = next(tmp_path.glob("region_assignment_*.npz"))
    path.write_bytes(b"not a zip file")

    again = ft.assign_regions(knowledge, images, tmp_path, progress=False)

    np.testing.assert_array_equal(again.concepts, first.concepts)
    assert ft.RegionAssignment.load(path).images_fingerprint == first.images_fingerprint


def test_batch_regions_best_per_concept():
    assignment = ft.RegionAssignment(
        concepts=np.array([[4, 7, -1], [4, 1, 7], [9, 9, 9]]),
        scores=np.array([[0.6, 0.2, -np.inf], [0.8, 0.5, 0.3], [0.1, 0.2, 0.3]], np.float32),
        knowledge_fingerprint="k",
        images_fingerprint="i",
    )

    image_ids, region_ids = ft.batch_regions(assignment, np.array([1, 0]))

    # Image 2 is not in the batch. Concept 4: image 1 region 0 (0.8 > 0.6); concept 7: image 1
    # region 2 (0.3 > 0.2); concept 1: image 1 region 1.
    assert sorted(zip(image_ids.tolist(), region_ids.tolist(), strict=True)) == [
        (1, 0),
        (1, 1),
        (1, 2),
    ]


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def test_sampler_images_once_per_epoch():
    sampler = ft.BatchSampler(n_images=10, n_texts=7, batch_images=4, batch_texts=3, seed=0)
    assert sampler.steps_per_epoch == 3

    for epoch in range(2):
        batches = [sampler.images(epoch, step) for step in range(3)]
        assert [len(batch) for batch in batches] == [4, 4, 2]
        assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert not np.array_equal(sampler.images(0, 0), sampler.images(1, 0))


def test_sampler_cycles_texts_independently():
    sampler = ft.BatchSampler(n_images=10, n_texts=7, batch_images=4, batch_texts=3, seed=0)
    stream = np.concatenate([sampler.texts(epoch, step) for epoch in range(3) for step in range(3)])

    assert len(stream) == 27
    for cycle in range(3):  # each block of 7 consecutive texts is one permutation of all texts
        assert sorted(stream[7 * cycle : 7 * cycle + 7].tolist()) == list(range(7))


def test_sampler_is_stateless():
    first = ft.BatchSampler(10, 7, 4, 3, seed=5)
    second = ft.BatchSampler(10, 7, 4, 3, seed=5)
    second.texts(4, 2)  # a different call history must not change later batches
    np.testing.assert_array_equal(first.images(2, 1), second.images(2, 1))
    np.testing.assert_array_equal(first.texts(2, 1), second.texts(2, 1))
    assert not np.array_equal(first.images(2, 1), ft.BatchSampler(10, 7, 4, 3, 6).images(2, 1))


def test_text_word_ids_and_batch_words(world):
    knowledge, _, _ = world
    texts = [
        ParsedText("a", [Unit("thing03", ("thing05",)), Unit("thing01")]),
        ParsedText("b", []),
        ParsedText("c", [Unit("thing03")]),
    ]

    word_ids = ft.text_word_ids(knowledge, texts)

    assert [ids.tolist() for ids in word_ids] == [[3, 5, 1], [], [3]]
    assert ft.batch_words(word_ids, np.array([2, 0, 1])).tolist() == [1, 3, 5]


def test_text_word_ids_rejects_unknown_words(world):
    knowledge, _, _ = world
    with pytest.raises(ft.FinetuneError, match="text 1 .*'zebra' is not in the knowledge"):
        ft.text_word_ids(knowledge, [ParsedText("a", []), ParsedText("b", [Unit("zebra")])])
    with pytest.raises(ft.FinetuneError, match="none of the 1 texts"):
        ft.text_word_ids(knowledge, [ParsedText("nothing known", [])])


# ----------------------------------------------------------------------------------------------
# Fine-tuned knowledge in matching
# ----------------------------------------------------------------------------------------------


def test_identity_W_gives_pretrained_scores(world):
    knowledge, _, (images, texts) = world
    identity = np.eye(knowledge.dim, dtype=np.float32)

    pretrained = score_matrix(knowledge, texts, images, progress=False)
    both = score_matrix(knowledge, texts, images, W=identity, progress=False)
    words_only = score_matrix(
        knowledge, texts, images, W=identity, transform="words", progress=False
    )
    finetuned = score_matrix(knowledge.transformed(identity), texts, images, progress=False)

    np.testing.assert_array_equal(both, pretrained)
    np.testing.assert_array_equal(words_only, pretrained)
    np.testing.assert_array_equal(finetuned, pretrained)


def test_finetuned_knowledge_equals_W_scores(world):
    knowledge, (train_images, train_texts), (images, texts) = world
    result = ft.finetune(knowledge, train_images, train_texts, FAST, progress=False)
    transformed_regions = ImageRegions(images.features @ result.W.T, images.counts)

    with_W = score_matrix(result.knowledge_base, texts, images, W=result.W, progress=False)
    with_u = score_matrix(result.knowledge_finetuned, texts, transformed_regions, progress=False)

    np.testing.assert_allclose(with_u, with_W, atol=1e-5)
    assert not np.allclose(result.W, np.eye(knowledge.dim))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def test_training_lowers_loss_and_improves_rsum(world):
    knowledge, (train_images, train_texts), (test_images, test_texts) = world
    config = ft.FinetuneConfig(batch_images=16, batch_texts=16, lr=2e-3, epochs=30, seed=0)

    result = ft.finetune(knowledge, train_images, train_texts, config, progress=False)

    log = result.log
    assert log.epochs == list(range(1, 31))
    assert np.mean(log.loss[-5:]) < 0.7 * np.mean(log.loss[:2])
    assert log.words_per_step[0] > 5
    assert log.regions_per_step[0] > 5
    pretrained = evaluate(score_matrix(knowledge, test_texts, test_images, progress=False))
    finetuned = evaluate(
        score_matrix(knowledge, test_texts, test_images, W=result.W, progress=False)
    )
    assert finetuned["rsum"] > pretrained["rsum"] + 30


def test_training_with_texts_of_other_images(world):
    # "w/o implicit prior": the texts describe other images than the ones trained on.
    knowledge, (train_images, _), _ = world
    _, (_, other_texts), _ = make_world(seed=0, n_train=60)
    other_texts = other_texts[::-1]

    result = ft.finetune(knowledge, train_images, other_texts, FAST, progress=False)

    assert result.log.loss[-1] < result.log.loss[0]


def test_literal_form_trains(world):
    knowledge, (train_images, train_texts), _ = world
    config = ft.FinetuneConfig(
        batch_images=16, batch_texts=16, lr=2e-3, epochs=4, normalize="none", temperature=1.0
    )
    result = ft.finetune(knowledge, train_images, train_texts, config, progress=False)
    assert result.log.loss[-1] < result.log.loss[0]


def test_seed_determines_W(world):
    knowledge, (images, texts), _ = world
    first = ft.finetune(knowledge, images, texts, FAST, progress=False)
    second = ft.finetune(knowledge, images, texts, FAST, progress=False)
    other = ft.finetune(
        knowledge, images, texts, ft.FinetuneConfig(**{**FAST.to_dict(), "seed": 4}), progress=False
    )
    np.testing.assert_array_equal(first.W, second.W)
    assert not np.array_equal(first.W, other.W)


class Interrupted(Exception):
    pass


def interrupt_after(epoch_to_stop):
    def callback(epoch, log):
        assert len(log) == epoch
        if epoch == epoch_to_stop:
            raise Interrupted

    return callback


@pytest.mark.parametrize("train", [ft.finetune, ft.finetune_without_knowledge])
def test_resume_gives_same_W_bitwise(world, tmp_path, train):
    knowledge, (images, texts), _ = world
    checkpoint = tmp_path / "checkpoint.pt"
    uninterrupted = train(knowledge, images, texts, FAST, progress=False)

    with pytest.raises(Interrupted):
        train(
            knowledge, images, texts, FAST, checkpoint=checkpoint,
            callback=interrupt_after(2), progress=False,
        )  # fmt: skip
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    resumed = train(knowledge, images, texts, FAST, checkpoint=checkpoint, progress=False)

    np.testing.assert_array_equal(resumed.W, uninterrupted.W)
    np.testing.assert_array_equal(
        resumed.knowledge_base.prototypes, uninterrupted.knowledge_base.prototypes
    )
    assert resumed.log.loss == uninterrupted.log.loss
    assert resumed.log.epochs == [1, 2, 3, 4]


def test_finished_run_resume_skips_training(world, tmp_path, monkeypatch):
    knowledge, (images, texts), _ = world
    checkpoint = tmp_path / "checkpoint.pt"
    finished = ft.finetune(knowledge, images, texts, FAST, checkpoint=checkpoint, progress=False)
    monkeypatch.setattr(ft, "_train_step", lambda *args: pytest.fail("should not train"))

    again = ft.finetune(knowledge, images, texts, FAST, checkpoint=checkpoint, progress=False)

    np.testing.assert_array_equal(again.W, finished.W)


def test_resume_rejects_other_run(world, tmp_path):
    knowledge, (images, texts), _ = world
    checkpoint = tmp_path / "checkpoint.pt"
    ft.finetune(knowledge, images, texts, FAST, checkpoint=checkpoint, progress=False)

    other_lr = ft.FinetuneConfig(**{**FAST.to_dict(), "lr": 1e-3})
    with pytest.raises(ft.FinetuneError, match="lr = 0.002 but the config has 0.001"):
        ft.finetune(knowledge, images, texts, other_lr, checkpoint=checkpoint, progress=False)
    with pytest.raises(ft.FinetuneError, match="texts_fingerprint"):
        ft.finetune(knowledge, images, texts[:50], FAST, checkpoint=checkpoint, progress=False)
    shorter = ft.FinetuneConfig(**{**FAST.to_dict(), "epochs": 2})
    with pytest.raises(ft.FinetuneError, match="after epoch 4 but the config asks for 2"):
        ft.finetune(knowledge, images, texts, shorter, checkpoint=checkpoint, progress=False)
    with pytest.raises(ft.FinetuneError, match="variant"):
        ft.finetune_without_knowledge(
            knowledge, images, texts, FAST, checkpoint=checkpoint, progress=False
        )


def test_longer_run_continues_from_checkpoint(world, tmp_path):
    knowledge, (images, texts), _ = world
    checkpoint = tmp_path / "checkpoint.pt"
    ft.finetune(knowledge, images, texts, FAST, checkpoint=checkpoint, progress=False)
    longer = ft.FinetuneConfig(**{**FAST.to_dict(), "epochs": 6})

    continued = ft.finetune(knowledge, images, texts, longer, checkpoint=checkpoint, progress=False)
    direct = ft.finetune(knowledge, images, texts, longer, progress=False)

    np.testing.assert_array_equal(continued.W, direct.W)


def test_corrupt_checkpoint_raises(world, tmp_path):
    knowledge, (images, texts), _ = world
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"garbage")
    with pytest.raises(ft.FinetuneError, match="failed to read the fine-tuning checkpoint"):
        ft.finetune(knowledge, images, texts, FAST, checkpoint=checkpoint, progress=False)


def test_without_knowledge_learns_word_vectors(world):
    knowledge, (images, texts), (test_images, test_texts) = world

    result = ft.finetune_without_knowledge(knowledge, images, texts, FAST, progress=False)

    learned = result.knowledge_base
    assert learned.words == knowledge.words
    assert learned.counts.tolist() == [0] * len(knowledge)
    assert learned.provenance["finetune"]["variant"] == ft.WITHOUT_KNOWLEDGE
    assert not np.allclose(learned.prototypes, knowledge.prototypes)
    initial = torch.empty(len(knowledge), knowledge.dim)
    initial.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(FAST.seed))
    moved = np.abs(learned.prototypes - initial.numpy()).max(axis=1)
    assert (moved > 0).all()  # Adam moved every row (unseen words through their zero gradients)
    np.testing.assert_allclose(
        result.knowledge_finetuned.prototypes, learned.prototypes @ result.W.T, rtol=1e-6
    )
    sims = score_matrix(learned, test_texts, test_images, W=result.W, progress=False)
    assert np.isfinite(sims).all()


def test_training_rejects_mismatched_inputs(world):
    knowledge, (images, texts), _ = world
    narrow = ImageRegions.from_dense(images.features[:, :, :10])
    with pytest.raises(ft.FinetuneError, match="10 dimensions"):
        ft.finetune(knowledge, narrow, texts, FAST, progress=False)
    other = ft.assign_regions(knowledge, ImageRegions.from_dense(images.features[:5]))
    with pytest.raises(ft.FinetuneError, match="region assignment has shape"):
        ft.finetune(knowledge, images, texts, FAST, assignment=other, progress=False)
    shifted = ImageRegions(images.features + 1.0, images.counts)
    other = ft.assign_regions(knowledge, shifted, progress=False)
    with pytest.raises(ft.FinetuneError, match="computed for other images"):
        ft.finetune(knowledge, images, texts, FAST, assignment=other, progress=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_images", 0), ("epochs", 1.5), ("lr", -1.0), ("temperature", 0.0),
     ("normalize", "l2"), ("lr", float("nan"))],
)  # fmt: skip
def test_config_rejects_invalid_values(field, value):
    with pytest.raises(ft.FinetuneError, match=field):
        ft.FinetuneConfig(**{field: value})


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def test_result_save_and_load(world, tmp_path):
    knowledge, (images, texts), _ = world
    result = ft.finetune(knowledge, images, texts, FAST, dataset="test world", progress=False)

    paths = result.save(tmp_path / "out")

    saved = Knowledge.load(paths["knowledge_finetuned"])
    np.testing.assert_array_equal(saved.prototypes, result.knowledge_finetuned.prototypes)
    provenance = saved.provenance["finetune"]
    assert provenance["dataset"] == "test world"
    assert provenance["epochs"] == FAST.epochs
    assert provenance["seed"] == FAST.seed
    assert provenance["base_knowledge"]["provenance"] == {"source": "test world"}
    assert saved.provenance["transforms"][0]["shape"] == [knowledge.dim, knowledge.dim]
    W, W_provenance = ft.load_transform(paths["W"])
    np.testing.assert_array_equal(W, result.W)
    assert W_provenance["config"] == FAST.to_dict()
    assert "knowledge_learned" not in paths
    assert paths["log"].is_file()


def test_load_transform_rejects_other_files(tmp_path):
    path = tmp_path / "W.npz"
    np.savez(path, W=np.ones((3, 4)), provenance=np.array("{}"))
    with pytest.raises(ft.FinetuneError, match="square"):
        ft.load_transform(path)
    with pytest.raises(ft.FinetuneError, match="failed to read W"):
        ft.load_transform(tmp_path / "missing.npz")


def test_training_log_round_trip_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    log = ft.TrainingLog()
    for epoch in (1, 2, 3):
        log.append(
            epochs=epoch, loss_words=2.0 / epoch, loss_regions=1.0 / epoch, loss=3.0 / epoch,
            seconds=0.1, words_per_step=10.0, regions_per_step=12.0, attention_max=0.5,
            skipped_steps=0,
        )  # fmt: skip

    assert ft.TrainingLog.from_dict(log.to_dict()) == log
    ax = ft.plot_training_curve(log)
    assert len(ax.get_lines()) == 3
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [3.0, 1.5, 1.0])
    with pytest.raises(ft.FinetuneError, match="needs the fields"):
        log.append(epochs=4)

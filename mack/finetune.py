"""Fine-tuned domain knowledge (eqs. 2-3): learn one matrix W (F x F) from unpaired images and texts.

A training step takes a minibatch of images and an independently sampled minibatch of texts:

- words: the distinct knowledge words of the texts (unit nouns and adjectives), as columns V (F x M);
- regions: every region is given its best concept under the pretrained knowledge (cosine), and per
  concept only the highest-scoring region of the batch is kept, as columns R (F x N);
- loss: the concept-level cycle consistency of eqs. 2-3 in both directions, L = L_w + L_r
  (see `cycle_loss`).

After training, the fine-tuned prototypes are u_k = W v_k, and matching transforms the regions by the
same W: `mack.matching.score_matrix(result.knowledge_base, texts, images, W=result.W)`.

NOTE: eqs. 2-3 say neither whether features are L2-normalised nor whether the softmaxes have a
temperature. The literal products (normalize="none", temperature=1) saturate at real feature scale.
EfficientNet-Lite0 features of COCO boxes are non-negative with norms of 12-34, so the entries of a
row of S differ by about 150 and softmax_rows(S) is almost one-hot (mean row max 0.95): each word is
rebuilt as its single nearest region, and the loss starts in the hundreds. Plain cosines
(temperature 1) go the other way: the softmax is almost uniform and training lowers rsum. The default
is therefore cosine products (columns of WV and WR L2-normalised) with temperature 0.05, the best of
0.01-1 on the f30k_like test split of `mack.synthetic.generate(size="small")`. Its rsum was 96
pretrained, 130 literal, 41 with plain cosines and 175 with the default (one run per setting). The
temperature is tuned on synthetic data only. The literal form stays available.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional
from tqdm.auto import tqdm

from mack.io import atomic_write, save_npz, write_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mack.knowledge import Knowledge
    from mack.matching import ImageRegions
    from mack.text import ParsedText

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("none", "features", "cosine")
ASSIGNMENT_VERSION = 1
CHECKPOINT_VERSION = 1
WITH_KNOWLEDGE, WITHOUT_KNOWLEDGE = "knowledge", "without_knowledge"

# Target size of one (regions x concepts) score block in `assign_regions`, in float32 entries (64 MiB).
_ASSIGN_BLOCK_ENTRIES = 1 << 24


class FinetuneError(ValueError):
    """Invalid input or state for fine-tuning: the message names the value and what to do."""


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of fine-tuning.

    The MACK paper (Huang et al.) sets batches of 128 images + 128 texts, Adam with lr 2e-4 and 30
    epochs. It does not set `normalize` and `temperature`, whose defaults the module NOTE explains.

    normalize: "none" uses the raw products of eqs. 2-3; "features" L2-normalises each prototype and
        region before W is applied; "cosine" L2-normalises the columns of WV and WR, so every product
        is a cosine.
    temperature: every softmax logit (the similarity S and the final word/region logits) is divided
        by it. The literal equations are normalize="none", temperature=1.0.
    embedding_std: standard deviation of the random initial word vectors of `finetune_without_knowledge`.
    """

    batch_images: int = 128
    batch_texts: int = 128
    lr: float = 2e-4
    epochs: int = 30
    seed: int = 0
    normalize: str = "cosine"
    temperature: float = 0.05
    embedding_std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("batch_images", "batch_texts", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FinetuneError(
                    f"FinetuneConfig.{name} must be a positive integer, got {value!r}"
                )
        if self.normalize not in NORMALIZATIONS:
            raise FinetuneError(
                f"FinetuneConfig.normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}"
            )
        for name in ("lr", "temperature", "embedding_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FinetuneError(
                    f"FinetuneConfig.{name} must be a positive number, got {value!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# The loss (eqs. 2-3)
# ----------------------------------------------------------------------------------------------


@dataclass
class CycleTerms:
    """Both directions of the cycle loss and how peaked their attention softmaxes are."""

    loss_words: torch.Tensor  # scalar, L_w (word -> regions -> word)
    loss_regions: torch.Tensor  # scalar, L_r (region -> words -> region)
    attention_max_words: float  # mean over words of max_j softmax_rows(S)[i, j]; 1.0 = one-hot
    attention_max_regions: float  # the same for the region -> words softmax


def cycle_loss(
    W: torch.Tensor,
    V: torch.Tensor,
    R: torch.Tensor,
    *,
    normalize: str = "none",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the cycle-consistency loss of eqs. 2-3 in both directions: (L_w, L_r).

    W: (F, F) transform; V: (F, M) word prototypes; R: (F, N) region features (columns are items).
    The defaults are the literal equations. Each loss is the mean cross-entropy over its rows.
    """
    terms = cycle_terms(W, V, R, normalize=normalize, temperature=temperature)
    return terms.loss_words, terms.loss_regions


def cycle_terms(
    W: torch.Tensor,
    V: torch.Tensor,
    R: torch.Tensor,
    *,
    normalize: str = "none",
    temperature: float = 1.0,
) -> CycleTerms:
    """Compute `cycle_loss` and the attention saturation of both directions."""
    if normalize not in NORMALIZATIONS:
        raise FinetuneError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if V.ndim != 2 or R.ndim != 2 or V.shape[0] != W.shape[1] or R.shape[0] != W.shape[1]:
        raise FinetuneError(
            f"shapes do not match: W {tuple(W.shape)}, V {tuple(V.shape)} and R {tuple(R.shape)} "
            "must be (F, F), (F, M) and (F, N)"
        )
    n_words = V.shape[1]

    if normalize == "features":
        V = functional.normalize(V, dim=0)
        R = functional.normalize(R, dim=0)
    projected = W @ torch.cat([V, R], dim=1)  # (F, M + N): one product for both sides
    if normalize == "cosine":
        projected = functional.normalize(projected, dim=0)
    words, regions = projected[:, :n_words], projected[:, n_words:]

    similarity = words.T @ regions / temperature  # S: (M, N)
    loss_words, max_words = _cycle_direction(similarity)
    loss_regions, max_regions = _cycle_direction(similarity.T)
    return CycleTerms(loss_words, loss_regions, max_words, max_regions)


def _cycle_direction(similarity: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Rebuild each query from the keys (eq. 2) and classify it among the queries (eq. 3).

    similarity: (M, N) = S / temperature for L_w (queries = WV, keys = WR), or its transpose for
    L_r. The rebuilt queries V_hat = (WR) softmax_rows(S)^T are never formed, because
    V_hat^T (WV) = softmax_rows(S) (WR)^T (WV) = softmax_rows(S) S^T. So S is the only product
    that sums over the F features, and the rest costs M * N * M (L_w) or N * M * N (L_r) products.
    """
    attention = torch.softmax(similarity, dim=1)  # softmax_rows(S): (M, N)
    logits = attention @ similarity.T  # V_hat^T (WV) / temperature: (M, M), Y_hat = its softmax
    labels = torch.arange(similarity.shape[0], device=similarity.device)
    loss = functional.cross_entropy(logits, labels)  # identity labels, mean over rows
    attention_max = attention.detach().max(dim=1).values.mean().item()
    return loss, attention_max


# ----------------------------------------------------------------------------------------------
# Region -> concept assignment (computed once per knowledge and dataset, cached)
# ----------------------------------------------------------------------------------------------


@dataclass
class RegionAssignment:
    """Each region's best concept under the pretrained knowledge (cosine) and that cosine."""

    concepts: np.ndarray  # (n_images, max_regions) int64 knowledge row, -1 = padding or zero
    scores: np.ndarray  # (n_images, max_regions) float32 cosine; -inf where concepts is -1
    knowledge_fingerprint: str
    images_fingerprint: str

    def save(self, path: str | os.PathLike) -> None:
        """Write the assignment to one .npz file, atomically."""
        save_npz(
            path,
            version=np.array(ASSIGNMENT_VERSION),
            concepts=self.concepts,
            scores=self.scores,
            knowledge_fingerprint=np.array(self.knowledge_fingerprint),
            images_fingerprint=np.array(self.images_fingerprint),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> RegionAssignment:
        """Read a file written by `save`; raise FinetuneError if it is corrupt or of another version."""
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {name: data[name] for name in _ASSIGNMENT_FIELDS}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise FinetuneError(
                f"{path}: failed to read the region assignment ({error}); delete it to recompute it"
            ) from error
        if int(fields["version"]) != ASSIGNMENT_VERSION:
            raise FinetuneError(
                f"{path}: region assignment version {int(fields['version'])}, expected "
                f"{ASSIGNMENT_VERSION}; delete the file to recompute it"
            )
        return cls(
            concepts=fields["concepts"],
            scores=fields["scores"],
            knowledge_fingerprint=str(fields["knowledge_fingerprint"]),
            images_fingerprint=str(fields["images_fingerprint"]),
        )


_ASSIGNMENT_FIELDS = (
    "version",
    "concepts",
    "scores",
    "knowledge_fingerprint",
    "images_fingerprint",
)


def knowledge_fingerprint(knowledge: Knowledge) -> str:
    """Hash the knowledge's words, types and prototypes (hex string, 32 characters)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\n".join(knowledge.words).encode())
    digest.update(b"\0" + "\n".join(knowledge.types).encode())
    prototypes = np.ascontiguousarray(knowledge.prototypes, dtype=np.float32)
    digest.update(repr(prototypes.shape).encode())
    digest.update(prototypes.tobytes())
    return digest.hexdigest()


def images_fingerprint(images: ImageRegions, sample_images: int = 64) -> str:
    """Hash the shape, dtype and region counts of `images` and the features of a sample of images.

    The sample is `sample_images` images spaced evenly over the set (first and last included), so a
    changed image outside the sample is not detected: pass a fresh `cache_dir` after editing
    features in place. Hashing every image would read the whole array (8.5 GB at Flickr30k size).
    """
    features, counts = _check_images(images)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((tuple(features.shape), str(features.dtype))).encode())
    digest.update(counts.tobytes())
    n_images = features.shape[0]
    picks = np.unique(np.linspace(0, n_images - 1, num=min(n_images, sample_images)).round())
    for image in picks.astype(np.int64):
        digest.update(np.ascontiguousarray(features[image]).tobytes())
    return digest.hexdigest()


def assign_regions(
    knowledge: Knowledge,
    images: ImageRegions,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
) -> RegionAssignment:
    """Give every region its best concept by cosine with all K prototypes.

    With `cache_dir`, the result is stored as region_assignment_<knowledge>_<images>.npz there
    (fingerprints in the name) and read back on the next call with the same knowledge and images.
    Regions with an all-zero feature have no cosine: they get concept -1 and are never selected.
    """
    knowledge_key = knowledge_fingerprint(knowledge)
    images_key = images_fingerprint(images)
    cache_path = None
    if cache_dir is not None:
        name = f"region_assignment_{knowledge_key[:16]}_{images_key[:16]}.npz"
        cache_path = Path(cache_dir) / name
        cached = _read_cached_assignment(cache_path, knowledge_key, images_key, images)
        if cached is not None:
            return cached

    concepts, scores = _compute_assignment(knowledge, images, progress)
    assignment = RegionAssignment(concepts, scores, knowledge_key, images_key)
    if cache_path is not None:
        assignment.save(cache_path)
        logger.info("region assignment written to %s", cache_path)
    return assignment


def _read_cached_assignment(
    path: Path, knowledge_key: str, images_key: str, images: ImageRegions
) -> RegionAssignment | None:
    if not path.exists():
        return None
    try:
        cached = RegionAssignment.load(path)
    except FinetuneError as error:
        logger.warning("ignoring unreadable region assignment cache: %s", error)
        return None
    expected_shape = tuple(images.features.shape[:2])
    if (
        cached.knowledge_fingerprint != knowledge_key
        or cached.images_fingerprint != images_key
        or cached.concepts.shape != expected_shape
    ):
        logger.warning("ignoring region assignment cache %s: it belongs to other inputs", path)
        return None
    logger.info("region assignment read from %s", path)
    return cached


def _compute_assignment(
    knowledge: Knowledge, images: ImageRegions, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    features, counts = _check_images(images)
    n_images, max_regions, dim = features.shape
    if dim != knowledge.dim:
        raise FinetuneError(
            f"region features have {dim} dimensions but the knowledge prototypes have "
            f"{knowledge.dim}; use features from the encoder that built the knowledge"
        )
    prototypes = functional.normalize(
        torch.from_numpy(np.asarray(knowledge.prototypes, np.float32)), dim=1
    )

    concepts = np.full((n_images, max_regions), -1, dtype=np.int64)
    scores = np.full((n_images, max_regions), -np.inf, dtype=np.float32)
    chunk = max(1, _ASSIGN_BLOCK_ENTRIES // max(1, max_regions * len(knowledge)))
    zero_regions = 0
    starts = range(0, n_images, chunk)
    for start in tqdm(starts, desc="assign regions", unit="chunk", disable=not progress):
        stop = min(start + chunk, n_images)
        valid = np.arange(max_regions)[None, :] < counts[start:stop, None]  # (c, max_regions)
        regions = np.asarray(features[start:stop], dtype=np.float32)[valid]  # (n_valid, F)
        _check_finite_regions(regions, valid, start)
        best, best_score, zero = _best_concepts(torch.from_numpy(regions), prototypes)
        concepts[start:stop][valid] = best
        scores[start:stop][valid] = best_score
        zero_regions += int(zero.sum())

    if zero_regions:
        logger.warning("%d regions have an all-zero feature and get no concept", zero_regions)
    return concepts, scores


def _best_concepts(
    regions: torch.Tensor, prototypes: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """regions: (n, F); prototypes: (K, F) unit rows. Return best row (-1 if zero), cosine, zero mask."""
    norms = regions.norm(dim=1)
    zero = norms == 0
    cosines = (regions / norms.clamp_min(torch.finfo(torch.float32).tiny)[:, None]) @ prototypes.T
    best_score, best = cosines.max(dim=1)
    best[zero] = -1
    best_score[zero] = -math.inf
    return best.numpy(), best_score.numpy(), zero.numpy()


def _check_finite_regions(regions: np.ndarray, valid: np.ndarray, start: int) -> None:
    finite = np.isfinite(regions).all(axis=1)
    if finite.all():
        return
    image_rows, region_cols = np.nonzero(valid)
    bad = int(np.argmin(finite))
    raise FinetuneError(
        f"region feature of image {start + image_rows[bad]}, region {region_cols[bad]} contains "
        "NaN or inf; fix the feature file or drop that image"
    )


def _check_images(images: ImageRegions) -> tuple[Any, np.ndarray]:
    """Validate a padded region batch; return (features (n, max_regions, F), counts (n,) int64)."""
    features = images.features
    if features.ndim != 3:
        raise FinetuneError(
            f"ImageRegions.features must be (n_images, max_regions, F), got shape {features.shape}"
        )
    counts = np.asarray(images.counts, dtype=np.int64)
    if counts.shape != (features.shape[0],):
        raise FinetuneError(
            f"ImageRegions.counts has shape {counts.shape}, expected ({features.shape[0]},)"
        )
    if features.shape[0] == 0:
        raise FinetuneError("ImageRegions has no images; fine-tuning needs at least one")
    bad = np.nonzero((counts < 0) | (counts > features.shape[1]))[0]
    if bad.size:
        raise FinetuneError(
            f"ImageRegions.counts[{bad[0]}] = {counts[bad[0]]} is outside 0..{features.shape[1]}"
        )
    return features, counts


def deduplicate_regions(concepts: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Keep one region per concept, the highest-scoring one (NMS-like); ties keep the earlier one.

    concepts: (n,) int concept of each region (negative = no concept, never kept);
    scores: (n,) float its cosine. Returns (N,) int64 positions of the kept regions, ascending.
    """
    concepts = np.asarray(concepts)
    scores = np.asarray(scores)
    if concepts.shape != scores.shape or concepts.ndim != 1:
        raise FinetuneError(
            f"concepts {concepts.shape} and scores {scores.shape} must be 1-D of the same length"
        )
    candidates = np.nonzero(concepts >= 0)[0]
    if candidates.size == 0:
        return candidates.astype(np.int64)

    # Sort by concept, then score descending, then position; the first row of each concept wins.
    order = np.lexsort((candidates, -scores[candidates], concepts[candidates]))
    ranked = candidates[order]
    ranked_concepts = concepts[ranked]
    first = np.ones(ranked.size, dtype=bool)
    first[1:] = ranked_concepts[1:] != ranked_concepts[:-1]
    return np.sort(ranked[first]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Minibatches: images and texts sampled independently, reproducible from (seed, epoch, step)
# ----------------------------------------------------------------------------------------------


class BatchSampler:
    """Seeded minibatch indices that depend only on (seed, epoch, step), so resuming is exact.

    Images: epoch e visits every image once, in a permutation seeded by (seed, e). The last batch of
    an epoch is smaller when batch_images does not divide n_images. Texts: an endless stream made of
    successive permutations, each seeded by (seed, cycle number). Step s of epoch e reads the stream
    from position (e * steps_per_epoch + s) * batch_texts, so texts cycle independently of images.
    """

    def __init__(self, n_images: int, n_texts: int, batch_images: int, batch_texts: int, seed: int):
        if n_images < 1 or n_texts < 1:
            raise FinetuneError(
                f"fine-tuning needs images and texts, got {n_images} images and {n_texts} texts"
            )
        self.n_images, self.n_texts = n_images, n_texts
        self.batch_images, self.batch_texts = batch_images, batch_texts
        self.seed = seed
        self.steps_per_epoch = math.ceil(n_images / batch_images)
        self._permutations: dict[tuple[int, int], np.ndarray] = {}  # the 4 most recent

    def images(self, epoch: int, step: int) -> np.ndarray:
        """Return (<= batch_images,) int64 image indices of a step."""
        permutation = self._permutation(0, epoch, self.n_images)
        return permutation[step * self.batch_images : (step + 1) * self.batch_images]

    def texts(self, epoch: int, step: int) -> np.ndarray:
        """Return (batch_texts,) int64 text indices of a step."""
        start = (epoch * self.steps_per_epoch + step) * self.batch_texts
        positions = np.arange(start, start + self.batch_texts, dtype=np.int64)
        cycles, offsets = np.divmod(positions, self.n_texts)
        indices = np.empty(self.batch_texts, dtype=np.int64)
        for cycle in np.unique(cycles):
            in_cycle = cycles == cycle
            indices[in_cycle] = self._permutation(1, int(cycle), self.n_texts)[offsets[in_cycle]]
        return indices

    def _permutation(self, stream: int, number: int, size: int) -> np.ndarray:
        key = (stream, number)
        if key not in self._permutations:
            if len(self._permutations) >= 4:
                self._permutations.pop(next(iter(self._permutations)))
            rng = np.random.default_rng([self.seed, stream, number])
            self._permutations[key] = rng.permutation(size)
        return self._permutations[key]


def text_word_ids(knowledge: Knowledge, texts: Sequence[ParsedText]) -> list[np.ndarray]:
    """Map each text's unit nouns and adjectives to knowledge rows: a list of (n_words_i,) int64.

    Raises FinetuneError naming the text and the word when a word is missing from the knowledge
    (the texts were parsed against other knowledge).
    """
    index = knowledge.index
    word_ids = []
    for number, parsed in enumerate(texts):
        ids = []
        for unit in parsed.units:
            for word in (unit.noun, *unit.adjectives):
                if word not in index:
                    raise FinetuneError(
                        f"text {number} ({parsed.text!r}): word {word!r} is not in the knowledge; "
                        "parse the texts with TextParser.from_knowledge(knowledge)"
                    )
                ids.append(index[word])
        word_ids.append(np.asarray(ids, dtype=np.int64))
    if not any(ids.size for ids in word_ids):
        raise FinetuneError(
            f"none of the {len(texts)} texts contains a knowledge word, so there is nothing to "
            "train on; check that the texts were parsed with the knowledge's vocabulary"
        )
    return word_ids


def batch_words(word_ids: Sequence[np.ndarray], texts: np.ndarray) -> np.ndarray:
    """Return the (M,) sorted distinct knowledge rows named by the texts of a batch."""
    if len(texts) == 0:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate([word_ids[text] for text in texts]))


def batch_regions(assignment: RegionAssignment, images: np.ndarray) -> tuple[np.ndarray, ...]:
    """Select a batch's regions: the best one per concept. Return (image, region) index arrays (N,)."""
    images = np.sort(images)  # reading rows in file order is faster on a memmap
    concepts = assignment.concepts[images].ravel()
    scores = assignment.scores[images].ravel()
    kept = deduplicate_regions(concepts, scores)
    max_regions = assignment.concepts.shape[1]
    return images[kept // max_regions], kept % max_regions


# ----------------------------------------------------------------------------------------------
# Training log
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainingLog:
    """Per-epoch means over the training steps of each epoch (one list entry per epoch)."""

    epochs: list[int] = field(default_factory=list)  # 1-based epoch number
    loss_words: list[float] = field(default_factory=list)  # L_w
    loss_regions: list[float] = field(default_factory=list)  # L_r
    loss: list[float] = field(default_factory=list)  # L_w + L_r
    seconds: list[float] = field(default_factory=list)  # wall time of the epoch's steps
    words_per_step: list[float] = field(default_factory=list)  # mean M
    regions_per_step: list[float] = field(default_factory=list)  # mean N
    attention_max: list[float] = field(default_factory=list)  # mean row max of the softmax
    skipped_steps: list[int] = field(default_factory=list)  # steps with no word or no region

    def __len__(self) -> int:
        return len(self.epochs)

    def append(self, **values: float) -> None:
        """Add one epoch; `values` must name every field once."""
        names = [item.name for item in dataclasses.fields(self)]
        if sorted(values) != sorted(names):
            raise FinetuneError(
                f"TrainingLog.append needs the fields {names}, got {sorted(values)}"
            )
        for name in names:
            getattr(self, name).append(values[name])

    def to_dict(self) -> dict[str, list]:
        return {item.name: list(getattr(self, item.name)) for item in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> TrainingLog:
        return cls(**{item.name: list(data[item.name]) for item in dataclasses.fields(cls)})


def plot_training_curve(log: TrainingLog, ax: Axes | None = None) -> Axes:
    """Draw L_w, L_r and their sum over epochs; return the axes."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(log.epochs, log.loss, marker="o", label="total $L_w + L_r$")
    ax.plot(log.epochs, log.loss_words, linestyle="--", label="$L_w$ (word → regions → word)")
    ax.plot(log.epochs, log.loss_regions, linestyle=":", label="$L_r$ (region → words → region)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean over steps)")
    ax.set_title("MACK fine-tuning")
    ax.legend()
    return ax


# ----------------------------------------------------------------------------------------------
# Training state and checkpoints
# ----------------------------------------------------------------------------------------------


@dataclass
class _TrainState:
    W: torch.nn.Parameter  # (F, F), starts at the identity
    embedding: torch.nn.Embedding | None  # (K, F) learned words; None when words are prototypes
    optimizer: torch.optim.Adam
    log: TrainingLog
    epoch: int = 0  # completed epochs


def _initial_state(
    dim: int, n_words: int, config: FinetuneConfig, learn_words: bool
) -> _TrainState:
    W = torch.nn.Parameter(torch.eye(dim, dtype=torch.float32))
    parameters = [W]
    embedding = None
    if learn_words:
        embedding = torch.nn.Embedding(n_words, dim)
        generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            embedding.weight.normal_(0.0, config.embedding_std, generator=generator)
        parameters.append(embedding.weight)
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    return _TrainState(W, embedding, optimizer, TrainingLog())


def _save_checkpoint(path: Path, state: _TrainState, run: dict[str, Any]) -> None:
    """Write the state after a finished epoch: tmp file + rename, so a crash keeps the previous one.

    No random-generator state is stored because the sampler has none: every batch is a function
    of (seed, epoch, step), and the seed is part of `run["config"]`.
    """
    payload = {
        "version": CHECKPOINT_VERSION,
        "epoch": state.epoch,
        "W": state.W.detach().clone(),
        "word_vectors": _embedding_weight(state),
        "optimizer": state.optimizer.state_dict(),
        "log": state.log.to_dict(),
        **run,
    }
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def _embedding_weight(state: _TrainState) -> torch.Tensor | None:
    if state.embedding is None:
        return None
    return state.embedding.weight.detach().clone()


def _restore_checkpoint(path: Path, state: _TrainState, run: dict[str, Any]) -> None:
    """Load a checkpoint written by `_save_checkpoint` into `state` after checking it fits this run."""
    try:
        payload = torch.load(path, weights_only=True)
        version = payload["version"]
    except (
        OSError,
        RuntimeError,
        LookupError,
        TypeError,
        EOFError,
        pickle.UnpicklingError,
    ) as error:
        raise FinetuneError(
            f"{path}: failed to read the fine-tuning checkpoint ({error}); delete it to start over"
        ) from error
    if version != CHECKPOINT_VERSION:
        raise FinetuneError(
            f"{path}: checkpoint version {version}, expected {CHECKPOINT_VERSION}; delete it"
        )
    _check_same_run(path, payload, run)

    with torch.no_grad():
        state.W.copy_(payload["W"])
        if state.embedding is not None:
            state.embedding.weight.copy_(payload["word_vectors"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.log = TrainingLog.from_dict(payload["log"])
    state.epoch = int(payload["epoch"])
    logger.info("resuming fine-tuning from %s after epoch %d", path, state.epoch)


def _check_same_run(path: Path, payload: dict[str, Any], run: dict[str, Any]) -> None:
    """Raise unless the checkpoint was written for the same inputs and settings (epochs may differ)."""
    for key in ("variant", "knowledge_fingerprint", "images_fingerprint", "texts_fingerprint"):
        if payload.get(key) != run[key]:
            raise FinetuneError(
                f"{path}: the checkpoint has {key} = {payload.get(key)!r} but this run has "
                f"{run[key]!r}; pass another checkpoint path or delete this one"
            )
    saved, current = dict(payload["config"]), dict(run["config"])
    if payload["epoch"] > current["epochs"]:
        raise FinetuneError(
            f"{path}: the checkpoint is after epoch {payload['epoch']} but the config asks for "
            f"{current['epochs']} epochs; raise FinetuneConfig.epochs or pass another checkpoint"
        )
    saved.pop("epochs", None)
    current.pop("epochs", None)
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise FinetuneError(
                f"{path}: the checkpoint was trained with {key} = {saved.get(key)!r} but the "
                f"config has {current.get(key)!r}; pass another checkpoint path or delete this one"
            )


@contextlib.contextmanager
def _deterministic_algorithms() -> Iterator[None]:
    """Enable torch's deterministic algorithms for the block, then restore the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------


@dataclass
class _TrainingData:
    features: Any  # (n_images, max_regions, F) float32 array or memmap
    assignment: RegionAssignment
    word_ids: list[np.ndarray]  # per text, (n_words_i,) knowledge rows
    prototypes: torch.Tensor  # (K, F) float32 pretrained prototypes
    sampler: BatchSampler


def _train_step(
    state: _TrainState, data: _TrainingData, config: FinetuneConfig, epoch: int, step: int
) -> dict[str, float] | None:
    """Run one optimiser step; return its statistics, or None when the batch has no word or region."""
    words = batch_words(data.word_ids, data.sampler.texts(epoch, step))
    image_ids, region_ids = batch_regions(data.assignment, data.sampler.images(epoch, step))
    if words.size == 0 or image_ids.size == 0:
        return None

    word_index = torch.from_numpy(words)
    if state.embedding is None:
        V = data.prototypes[word_index]  # (M, F)
    else:
        V = state.embedding(word_index)  # (M, F)
    R = torch.from_numpy(np.asarray(data.features[image_ids, region_ids], dtype=np.float32))

    terms = cycle_terms(
        state.W, V.T, R.T, normalize=config.normalize, temperature=config.temperature
    )
    loss = terms.loss_words + terms.loss_regions
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"fine-tuning loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
            "lower the learning rate or use normalize='cosine'"
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()

    return {
        "loss_words": terms.loss_words.item(),
        "loss_regions": terms.loss_regions.item(),
        "loss": loss.item(),
        "words_per_step": float(words.size),
        "regions_per_step": float(image_ids.size),
        "attention_max": (terms.attention_max_words + terms.attention_max_regions) / 2,
    }


def _train_epoch(
    state: _TrainState, data: _TrainingData, config: FinetuneConfig, progress: bool
) -> dict[str, float]:
    """Run every step of epoch `state.epoch`; return the epoch's TrainingLog entry."""
    started = time.perf_counter()
    epoch = state.epoch
    steps = range(data.sampler.steps_per_epoch)
    bar = tqdm(steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress)
    records = []
    for step in bar:
        record = _train_step(state, data, config, epoch, step)
        if record is not None:
            records.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
    if not records:
        raise FinetuneError(
            f"no step of epoch {epoch + 1} had both a known word and a region with a concept; "
            "check that the texts were parsed against this knowledge and the images have regions"
        )

    entry = {key: float(np.mean([record[key] for record in records])) for key in records[0]}
    entry["epochs"] = epoch + 1
    entry["seconds"] = time.perf_counter() - started
    entry["skipped_steps"] = data.sampler.steps_per_epoch - len(records)
    return entry


def _run_training(
    state: _TrainState,
    data: _TrainingData,
    config: FinetuneConfig,
    run: dict[str, Any],
    checkpoint: Path | None,
    callback: Callable[[int, TrainingLog], None] | None,
    progress: bool,
) -> None:
    """Train from epoch `state.epoch` to `config.epochs`, checkpointing after every epoch."""
    epochs = tqdm(
        range(state.epoch, config.epochs),
        desc="fine-tune W",
        unit="epoch",
        initial=state.epoch,
        total=config.epochs,
        disable=not progress,
    )
    with _deterministic_algorithms():
        for _ in epochs:
            entry = _train_epoch(state, data, config, progress)
            state.log.append(**entry)
            state.epoch += 1
            epochs.set_postfix(loss=f"{entry['loss']:.4f}")
            logger.info(
                "epoch %d/%d: L_w %.4f, L_r %.4f, total %.4f (%.1f s)",
                state.epoch,
                config.epochs,
                entry["loss_words"],
                entry["loss_regions"],
                entry["loss"],
                entry["seconds"],
            )
            if checkpoint is not None:
                _save_checkpoint(checkpoint, state, run)
            if callback is not None:
                callback(state.epoch, state.log)


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    """A trained W and the knowledge it produces.

    Match with `score_matrix(result.knowledge_base, texts, images, W=result.W)`, which applies W to
    both the prototypes and the regions (transform="words" applies it to the prototypes only).
    """

    W: np.ndarray  # (F, F) float32
    log: TrainingLog
    knowledge_finetuned: Knowledge  # u_k = W v_k, provenance["finetune"] describes the run
    knowledge_base: Knowledge  # the v_k that W multiplies: pretrained, or learned (w/o knowledge)
    provenance: dict[str, Any]

    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write the fine-tuned knowledge, W and the training log into `directory`; return the paths.

        Files: knowledge_finetuned.npz, W.npz (W and the provenance JSON), training_log.json, and
        for the "w/o knowledge" variant knowledge_learned.npz (the learned word vectors).
        """
        directory = Path(directory)
        paths = {
            "knowledge_finetuned": directory / "knowledge_finetuned.npz",
            "W": directory / "W.npz",
            "log": directory / "training_log.json",
        }
        self.knowledge_finetuned.save(paths["knowledge_finetuned"])
        provenance_json = json.dumps(self.provenance, default=str)
        save_npz(paths["W"], W=self.W, provenance=np.array(provenance_json))
        write_json(paths["log"], self.log.to_dict())
        if self.provenance["variant"] == WITHOUT_KNOWLEDGE:
            paths["knowledge_learned"] = directory / "knowledge_learned.npz"
            self.knowledge_base.save(paths["knowledge_learned"])
        return paths


def load_transform(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a W.npz written by `FinetuneResult.save`: ((F, F) float32 W, provenance dict)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            W = data["W"]
            provenance = json.loads(str(data["provenance"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise FinetuneError(
            f"{path}: failed to read W ({error}); write it with FinetuneResult.save"
        ) from error
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise FinetuneError(f"{path}: W has shape {W.shape}, expected a square (F, F) matrix")
    return W, provenance


def finetune(
    knowledge: Knowledge,
    images: ImageRegions,
    texts: Sequence[ParsedText],
    config: FinetuneConfig | None = None,
    *,
    dataset: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    assignment: RegionAssignment | None = None,
    cache_dir: str | os.PathLike | None = None,
    callback: Callable[[int, TrainingLog], None] | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Learn W from unpaired images and texts with the cycle loss of eqs. 2-3.

    knowledge: pretrained knowledge, prototypes (K, F); images: regions (n_images, max_regions, F);
    texts: parsed against `knowledge`, sampled independently of the images. Images and texts may
    come from different datasets ("w/o implicit prior"). dataset: a name for the provenance.
    checkpoint: a file written after every epoch. When it exists, training resumes from it. The
    resumed run ends with the same W, bitwise, as an uninterrupted run on the same machine and
    torch thread count.
    assignment: the output of `assign_regions` for these inputs, else it is computed (and cached
    in `cache_dir`). callback(epoch, log) runs after each epoch's checkpoint is written.
    """
    return _finetune_variant(
        WITH_KNOWLEDGE, knowledge, images, texts, config, dataset, checkpoint, assignment,
        cache_dir, callback, progress,
    )  # fmt: skip


def finetune_without_knowledge(
    knowledge: Knowledge,
    images: ImageRegions,
    texts: Sequence[ParsedText],
    config: FinetuneConfig | None = None,
    *,
    dataset: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    assignment: RegionAssignment | None = None,
    cache_dir: str | os.PathLike | None = None,
    callback: Callable[[int, TrainingLog], None] | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Run the "w/o knowledge" variant: words are learned vectors, not prototypes.

    The words are an nn.Embedding over the knowledge vocabulary, initialised N(0, embedding_std^2)
    from the seed and trained with W under the same loss. `knowledge` supplies the vocabulary and
    the region assignment only. The arguments are those of `finetune`. The learned vectors become
    `result.knowledge_base` (counts 0), and matching uses them with W like the full model.

    NOTE: regions are still de-duplicated by their best pretrained concept, so that only the word
    representation changes. The MACK paper does not say how it selected regions in this variant.
    """
    return _finetune_variant(
        WITHOUT_KNOWLEDGE, knowledge, images, texts, config, dataset, checkpoint, assignment,
        cache_dir, callback, progress,
    )  # fmt: skip


def _finetune_variant(
    variant: str,
    knowledge: Knowledge,
    images: ImageRegions,
    texts: Sequence[ParsedText],
    config: FinetuneConfig | None,
    dataset: str | None,
    checkpoint: str | os.PathLike | None,
    assignment: RegionAssignment | None,
    cache_dir: str | os.PathLike | None,
    callback: Callable[[int, TrainingLog], None] | None,
    progress: bool,
) -> FinetuneResult:
    config = config or FinetuneConfig()
    data, run = _prepare(knowledge, images, texts, config, assignment, cache_dir, progress)
    run["variant"] = variant
    state = _initial_state(knowledge.dim, len(knowledge), config, variant == WITHOUT_KNOWLEDGE)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None and checkpoint.exists():
        _restore_checkpoint(checkpoint, state, run)

    _run_training(state, data, config, run, checkpoint, callback, progress)
    return _make_result(knowledge, state, config, run, dataset, len(images.counts), len(texts))


def _prepare(
    knowledge: Knowledge,
    images: ImageRegions,
    texts: Sequence[ParsedText],
    config: FinetuneConfig,
    assignment: RegionAssignment | None,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> tuple[_TrainingData, dict[str, Any]]:
    """Check the inputs and build what every step reads, plus the run description for checkpoints."""
    features, _ = _check_images(images)
    if features.shape[2] != knowledge.dim:
        raise FinetuneError(
            f"region features have {features.shape[2]} dimensions but the knowledge prototypes "
            f"have {knowledge.dim}; use features from the encoder that built the knowledge"
        )
    word_ids = text_word_ids(knowledge, texts)
    if assignment is None:
        assignment = assign_regions(knowledge, images, cache_dir, progress=progress)
    else:
        _check_assignment(assignment, knowledge, images)

    sampler = BatchSampler(
        features.shape[0], len(texts), config.batch_images, config.batch_texts, config.seed
    )
    prototypes = torch.from_numpy(np.asarray(knowledge.prototypes, dtype=np.float32))
    data = _TrainingData(features, assignment, word_ids, prototypes, sampler)
    run = {
        "config": config.to_dict(),
        "knowledge_fingerprint": assignment.knowledge_fingerprint,
        "images_fingerprint": assignment.images_fingerprint,
        "texts_fingerprint": _texts_fingerprint(word_ids),
    }
    return data, run


def _check_assignment(
    assignment: RegionAssignment, knowledge: Knowledge, images: ImageRegions
) -> None:
    """Raise unless `assignment` was computed by assign_regions for this knowledge and these images."""
    shape = tuple(images.features.shape[:2])
    if assignment.concepts.shape != shape or assignment.scores.shape != shape:
        raise FinetuneError(
            f"the region assignment has shape {assignment.concepts.shape} but the images have "
            f"{shape}; compute it with assign_regions(knowledge, images)"
        )
    expected = {
        "knowledge": (assignment.knowledge_fingerprint, knowledge_fingerprint(knowledge)),
        "images": (assignment.images_fingerprint, images_fingerprint(images)),
    }
    for what, (found, wanted) in expected.items():
        if found != wanted:
            raise FinetuneError(
                f"the region assignment was computed for other {what} (fingerprint {found}, "
                f"expected {wanted}); compute it with assign_regions(knowledge, images)"
            )


def _texts_fingerprint(word_ids: Sequence[np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for ids in word_ids:
        digest.update(np.int64(ids.size).tobytes())
        digest.update(ids.tobytes())
    return digest.hexdigest()


def _make_result(
    knowledge: Knowledge,
    state: _TrainState,
    config: FinetuneConfig,
    run: dict[str, Any],
    dataset: str | None,
    n_images: int,
    n_texts: int,
) -> FinetuneResult:
    """Package W, the base knowledge (pretrained or learned) and u_k = W v_k with provenance."""
    W = state.W.detach().numpy().copy()
    provenance = {
        "method": "MACK fine-tuning, cycle loss of eqs. 2-3",
        "variant": run["variant"],
        "base_knowledge": {
            "fingerprint": run["knowledge_fingerprint"],
            "provenance": dict(knowledge.provenance),
        },
        "dataset": dataset,
        "n_images": n_images,
        "n_texts": n_texts,
        "images_fingerprint": run["images_fingerprint"],
        "texts_fingerprint": run["texts_fingerprint"],
        "epochs": state.epoch,
        "seed": config.seed,
        "config": config.to_dict(),
        "final_loss": state.log.loss[-1] if len(state.log) else None,
    }

    base = knowledge
    if state.embedding is not None:
        base = _learned_knowledge(knowledge, state.embedding.weight.detach().numpy(), provenance)
    finetuned = base.transformed(W)
    finetuned.provenance = {**finetuned.provenance, "finetune": provenance}
    return FinetuneResult(W, state.log, finetuned, base, provenance)


def _learned_knowledge(
    knowledge: Knowledge, vectors: np.ndarray, provenance: dict[str, Any]
) -> Knowledge:
    """Wrap learned word vectors (K, F) as a Knowledge over the same vocabulary."""
    from mack.knowledge import Knowledge

    return Knowledge(
        words=list(knowledge.words),
        types=list(knowledge.types),
        prototypes=np.array(vectors, dtype=np.float32),
        counts=np.zeros(len(knowledge), dtype=np.int64),
        provenance={"source": "learned word vectors (w/o knowledge)", "finetune": provenance},
        random_regions=None,
    )

"""A small paired image-text model (VSE++) that supplies the base similarity matrices MACK re-ranks.

The MACK paper re-ranks CLIP, ALBEF, VSRN and SAEM. Their weights are not available offline, so this
module trains a visual-semantic embedding on a dataset's own train split instead:

- image: mean of its region features -> standardised -> linear -> L2 norm;
- text: average of learned word embeddings -> linear -> L2 norm;
- loss: hinge with the hardest negative in both directions (VSE++, Faghri et al., BMVC 2018).

A model trained on one dataset and scored on another gives the cross-dataset base of the paper's Table 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mack.io import atomic_write, write_json

logger = logging.getLogger(__name__)

CAPTIONS_PER_IMAGE = 5
PAD, UNK = "<pad>", "<unk>"
FORMAT_VERSION = 1
STATE_FILE = "vse_state.pt"
META_FILE = "vse.json"
_TOKEN = re.compile(r"[a-z0-9]+")


class VSEFormatError(ValueError):
    """A saved model folder is missing a file, corrupt, or from another format version."""


@dataclass
class VSEConfig:
    """Hyper-parameters of the VSE++ base model."""

    embed_dim: int = 256  # joint embedding size
    word_dim: int = 300  # word embedding size
    epochs: int = 10
    batch_size: int = 128  # (image, caption) pairs per step
    lr: float = 2e-3  # Adam learning rate
    weight_decay: float = 0.0  # L2 penalty on all weights (Adam's weight_decay)
    margin: float = 0.2  # hinge margin alpha
    max_violation: bool = True  # True keeps the hardest negative (VSE++), False sums all negatives
    # Epochs that sum the hinge over all negatives before max_violation applies. Hardest negatives
    # from a random start can collapse every embedding onto one point. On 5,000 synthetic images
    # without warm-up, the loss stayed near 2 * margin for all 10 epochs.
    warmup_epochs: int = 1
    grad_clip: float | None = 2.0  # max gradient norm, None to disable
    seed: int = 0
    min_word_count: int = 1  # rarer training words map to <unk>
    num_threads: int | None = 1  # torch intra-op threads while training, None keeps torch's setting

    def __post_init__(self) -> None:
        for name in ("embed_dim", "word_dim", "batch_size", "min_word_count"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VSEConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(
                f"VSEConfig.num_threads must be >= 1 or None, got {self.num_threads!r}"
            )
        for name in ("epochs", "warmup_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"VSEConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"VSEConfig.lr must be > 0, got {self.lr!r}")
        if not self.margin >= 0:
            raise ValueError(f"VSEConfig.margin must be >= 0, got {self.margin!r}")


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case alphanumeric tokens ("A dog's toy." -> a, dog, s, toy)."""
    return _TOKEN.findall(text.lower())


def build_vocabulary(captions: Sequence[str], min_word_count: int = 1) -> list[str]:
    """Return [<pad>, <unk>, words seen >= min_word_count times, most frequent first]."""
    counts = Counter(token for caption in captions for token in tokenize(caption))
    frequent_words = [word for word, count in counts.items() if count >= min_word_count]
    frequent_words.sort(key=lambda word: (-counts[word], word))
    return [PAD, UNK, *frequent_words]


def encode_captions(captions: Sequence[str], word_index: dict[str, int]) -> torch.Tensor:
    """Map captions to word ids, padded with <pad>: (n_captions, max_tokens) int64.

    Unknown words become <unk>, and a caption with no token becomes a single <unk>.
    """
    rows = []
    for caption in captions:
        ids = [word_index.get(token, word_index[UNK]) for token in tokenize(caption)]
        rows.append(ids or [word_index[UNK]])

    width = max((len(ids) for ids in rows), default=1)
    tokens = torch.full((len(rows), width), word_index[PAD], dtype=torch.int64)
    for row, ids in enumerate(rows):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return tokens


def pool_regions(images: Any, chunk_size: int = 1024, progress: bool = False) -> np.ndarray:
    """Average each image's valid regions: (n_images, feature_dim) float32.

    images: (n_images, n_regions, feature_dim) float array (a np.memmap is read in chunks), or an
    object with `.features` of that shape and `.counts` (n_images,) valid regions per image, such as
    mack.matching.ImageRegions. An image with no valid region pools to the zero vector.
    """
    features, counts = _unpack_images(images)
    n_images, n_regions, dim = features.shape
    pooled = np.zeros((n_images, dim), dtype=np.float64)

    starts = range(0, n_images, chunk_size)
    for start in tqdm(starts, desc="pool regions", disable=not progress, leave=False):
        chunk = np.asarray(features[start : start + chunk_size], dtype=np.float64)
        valid = np.arange(n_regions)[None, :] < counts[start : start + chunk_size, None]
        sums = np.einsum("irf,ir->if", chunk, valid.astype(np.float64))
        pooled[start : start + len(chunk)] = sums / np.maximum(valid.sum(axis=1), 1)[:, None]

    bad = np.flatnonzero(~np.isfinite(pooled).all(axis=1))
    if len(bad):
        raise ValueError(
            f"images: region features of image index {int(bad[0])} contain NaN or inf "
            f"({len(bad)} images affected). Fix or drop those images before training or scoring."
        )
    return pooled.astype(np.float32)


def _unpack_images(images: Any) -> tuple[Any, np.ndarray]:
    """Return (features (n_images, n_regions, F), counts (n_images,) int64) from either input form."""
    if hasattr(images, "features") and hasattr(images, "counts"):
        features, counts = images.features, np.asarray(images.counts)
    else:
        features, counts = images, None

    if not hasattr(features, "ndim") or features.ndim != 3:
        shape = getattr(features, "shape", type(features).__name__)
        raise ValueError(
            f"images: expected a (n_images, n_regions, feature_dim) array or ImageRegions, "
            f"got shape {shape}"
        )
    n_images, n_regions, _ = features.shape
    if counts is None:
        return features, np.full(n_images, n_regions, dtype=np.int64)

    if counts.shape != (n_images,) or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(
            f"images.counts: expected ({n_images},) integers, got {counts.shape} {counts.dtype}"
        )
    outside = np.flatnonzero((counts < 0) | (counts > n_regions))
    if len(outside):
        i = int(outside[0])
        raise ValueError(
            f"images.counts[{i}] = {int(counts[i])} is outside 0..{n_regions} (the padded region "
            f"count). Rebuild the ImageRegions batch."
        )
    return features, counts.astype(np.int64)


def _check_captions(captions: Sequence[str]) -> list[str]:
    """Return captions as a list, raising on any entry that is not a string."""
    captions = list(captions)
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}]: expected str, got {type(caption).__name__}")
    return captions


def vse_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    margin: float = 0.2,
    max_violation: bool = True,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compute the bidirectional hinge loss of a batch of matching pairs, summed over the batch.

    image_embeddings, text_embeddings: (B, D), row b of each is one matching pair.
    image_ids: (B,) int64 source image of each pair. Pairs that share an image are not negatives of
    each other (several captions of one image can fall in a batch). None means all images differ.
    Per pair b, with s = dot product (cosine for unit vectors): sum or max over negatives c of
    [margin + s(b, text c) - s(b, b)]_+ (image -> text) and [margin + s(image c, b) - s(b, b)]_+
    (text -> image). max_violation=True keeps only the hardest negative (VSE++).
    """
    scores = image_embeddings @ text_embeddings.T
    positives = scores.diagonal()
    if image_ids is None:
        image_ids = torch.arange(len(scores))
    same_image = image_ids[:, None] == image_ids[None, :]

    image_to_text = (margin + scores - positives[:, None]).clamp(min=0).masked_fill(same_image, 0)
    text_to_image = (margin + scores - positives[None, :]).clamp(min=0).masked_fill(same_image, 0)

    if max_violation:
        return image_to_text.max(dim=1).values.sum() + text_to_image.max(dim=0).values.sum()
    return image_to_text.sum() + text_to_image.sum()


class VSENet(nn.Module):
    """The two encoders: pooled regions and averaged word embeddings, each projected and L2-normalised."""

    def __init__(self, feature_dim: int, vocabulary_size: int, config: VSEConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.EmbeddingBag(
            vocabulary_size, config.word_dim, mode="mean", padding_idx=0
        )
        self.image_projection = nn.Linear(feature_dim, config.embed_dim)
        self.text_projection = nn.Linear(config.word_dim, config.embed_dim)
        # Standardisation of pooled regions, set from the training images by `standardise_from`.
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

        nn.init.uniform_(self.word_embeddings.weight, -0.1, 0.1)
        for projection in (self.image_projection, self.text_projection):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def standardise_from(self, pooled: torch.Tensor) -> None:
        """Store the per-dimension mean and std of training images' pooled regions (n_images, F).

        Pooled region features share a large common component. In the small synthetic world's
        f30k_like train split, the mean vector has norm 16.5 and a pooled vector about 16.9. Without standardisation all image embeddings start nearly
        equal and training stalls at loss = 2 * margin. A dimension that is constant in training
        keeps std 1.
        """
        std = pooled.std(dim=0)
        self.feature_mean.copy_(pooled.mean(dim=0))
        self.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def encode_images(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: (B, feature_dim) mean region features -> (B, embed_dim) unit vectors."""
        standardised = (pooled - self.feature_mean) / self.feature_std
        return F.normalize(self.image_projection(standardised), dim=1)

    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, max_tokens) word ids padded with 0 -> (B, embed_dim) unit vectors."""
        return F.normalize(self.text_projection(self.word_embeddings(tokens)), dim=1)


@dataclass
class VSEModel:
    """A trained VSE++ model with its vocabulary. `similarity` gives a base matrix to re-rank."""

    config: VSEConfig
    vocabulary: list[str]  # word of each embedding row: [<pad>, <unk>, training words...]
    feature_dim: int  # region feature size the image projection expects
    net: VSENet
    # Mean training loss per pair, per epoch. Warm-up epochs sum over all negatives, so they are
    # on a larger scale than the hardest-negative epochs after them.
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.word_index = {word: i for i, word in enumerate(self.vocabulary)}

    def encode_images(self, images: Any, batch_size: int = 4096) -> np.ndarray:
        """Embed images (array or ImageRegions, see pool_regions): (n_images, embed_dim) float32."""
        pooled = torch.from_numpy(pool_regions(images))
        if pooled.shape[1] != self.feature_dim:
            raise ValueError(
                f"images: feature_dim {pooled.shape[1]} does not match the {self.feature_dim} "
                f"this model was trained on"
            )
        return self._embed(self.net.encode_images, pooled, batch_size)

    def encode_texts(self, captions: Sequence[str], batch_size: int = 4096) -> np.ndarray:
        """Embed captions: (n_texts, embed_dim) float32. Words outside the vocabulary count as <unk>."""
        tokens = encode_captions(_check_captions(captions), self.word_index)
        return self._embed(self.net.encode_texts, tokens, batch_size)

    def similarity(self, images: Any, captions: Sequence[str]) -> np.ndarray:
        """Score every image against every caption: (n_images, n_texts) float32 cosine similarities."""
        image_embeddings = self.encode_images(images)
        text_embeddings = self.encode_texts(captions)
        return image_embeddings @ text_embeddings.T

    def mean_loss(self, images: Any, captions: Sequence[str], seed: int = 0) -> float:
        """Return the training loss per pair over one seeded pass, without updating the model."""
        pooled, tokens, pair_images = _training_tensors(images, captions, self.word_index)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(tokens), generator=generator)

        total = 0.0
        self.net.eval()
        with torch.no_grad():
            for batch in order.split(self.config.batch_size):
                total += float(self._batch_loss(pooled, tokens, pair_images, batch))
        return total / max(len(tokens), 1)

    def _batch_loss(
        self, pooled, tokens, pair_images, batch: torch.Tensor, max_violation: bool | None = None
    ) -> torch.Tensor:
        if max_violation is None:
            max_violation = self.config.max_violation
        image_ids = pair_images[batch]
        image_embeddings = self.net.encode_images(pooled[image_ids])
        text_embeddings = self.net.encode_texts(tokens[batch])
        return vse_loss(
            image_embeddings, text_embeddings, self.config.margin, max_violation, image_ids
        )

    def _embed(self, encoder, inputs: torch.Tensor, batch_size: int) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            parts = [encoder(chunk) for chunk in inputs.split(batch_size)]
        if not parts:
            return np.zeros((0, self.config.embed_dim), dtype=np.float32)
        return torch.cat(parts).numpy().astype(np.float32, copy=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model folder `path`: vse_state.pt (torch weights) and vse.json (the rest).

        Each file is written atomically, and vse.json stores the sha256 of vse_state.pt, so `load`
        detects a folder whose two files come from different saves.
        """
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(self.net.state_dict(), buffer)
        state = buffer.getvalue()

        with atomic_write(path / STATE_FILE, "wb") as handle:
            handle.write(state)
        meta = {
            "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(self.config),
            "feature_dim": self.feature_dim,
            "history": self.history,
            "state_sha256": hashlib.sha256(state).hexdigest(),
            "vocabulary": self.vocabulary,
        }
        write_json(path / META_FILE, meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VSEModel:
        """Read a model folder written by `save`. Raises VSEFormatError if it is incomplete or corrupt."""
        path = Path(path)
        meta = _read_meta(path / META_FILE)
        state_path = path / STATE_FILE
        if not state_path.is_file():
            raise VSEFormatError(f"{state_path}: file not found. Save the model again.")
        state = state_path.read_bytes()
        if hashlib.sha256(state).hexdigest() != meta["state_sha256"]:
            raise VSEFormatError(
                f"{state_path}: sha256 differs from state_sha256 in {META_FILE} (the two files "
                f"come from different saves or one is corrupt). Save the model again."
            )

        config = VSEConfig(**meta["config"])
        net = VSENet(meta["feature_dim"], len(meta["vocabulary"]), config)
        try:
            net.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        except (RuntimeError, KeyError) as error:
            raise VSEFormatError(
                f"{state_path}: weights do not fit {META_FILE}: {error}"
            ) from error
        return cls(config, meta["vocabulary"], meta["feature_dim"], net, meta["history"])


def _read_meta(meta_path: Path) -> dict:
    """Read and check vse.json."""
    if not meta_path.is_file():
        raise VSEFormatError(
            f"{meta_path}: file not found. Pass a folder written by VSEModel.save()."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VSEFormatError(
            f"{meta_path}: invalid JSON ({error}). Save the model again."
        ) from error

    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise VSEFormatError(
            f"{meta_path}: format_version {version!r}, expected {FORMAT_VERSION}. Retrain or save again."
        )
    expected = ("config", "feature_dim", "history", "state_sha256", "vocabulary")
    missing = [key for key in expected if key not in meta]
    if missing:
        raise VSEFormatError(f"{meta_path}: missing field(s) {missing}. Save the model again.")
    return meta


def _training_tensors(images: Any, captions: Sequence[str], word_index: dict[str, int]):
    """Return pooled regions (n_images, F), caption tokens (n_captions, L) and each caption's image.

    Raises ValueError unless there are exactly 5 captions per image.
    """
    captions = _check_captions(captions)
    pooled = torch.from_numpy(pool_regions(images))
    n_images = len(pooled)
    if len(captions) != CAPTIONS_PER_IMAGE * n_images:
        raise ValueError(
            f"captions: expected {CAPTIONS_PER_IMAGE} per image, {CAPTIONS_PER_IMAGE * n_images} "
            f"for {n_images} images, got {len(captions)}. Caption 5i..5i+4 must describe image i, so "
            f"check that the captions file and the image features come from the same split."
        )
    tokens = encode_captions(captions, word_index)
    pair_images = torch.arange(len(captions)) // CAPTIONS_PER_IMAGE
    return pooled, tokens, pair_images


def train_vse(
    images: Any, captions: Sequence[str], config: VSEConfig | None = None, progress: bool = True
) -> VSEModel:
    """Train a VSE++ model on paired data, each caption with its image (5 pairs per image per epoch).

    images: (n_images, n_regions, feature_dim) float array or ImageRegions (padding respected).
    captions: 5 * n_images strings, caption 5i..5i+4 describing image i.
    Same inputs and config.seed give the same weights (seeded init and batch order, CPU).
    """
    config = config or VSEConfig()
    captions = _check_captions(captions)
    vocabulary = build_vocabulary(captions, config.min_word_count)
    word_index = {word: i for i, word in enumerate(vocabulary)}
    pooled, tokens, pair_images = _training_tensors(images, captions, word_index)
    if len(pooled) < 2:
        raise ValueError(
            f"images: training needs at least 2 images for negatives, got {len(pooled)}"
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = VSENet(pooled.shape[1], len(vocabulary), config)
    net.standardise_from(pooled)
    model = VSEModel(config, vocabulary, int(pooled.shape[1]), net)
    logger.info(
        "training VSE++ on %d images, %d captions, %d words (incl. <pad>, <unk>), %d epochs",
        len(pooled),
        len(captions),
        len(vocabulary),
        config.epochs,
    )

    optimizer = torch.optim.Adam(
        net.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
    )
    generator = torch.Generator().manual_seed(config.seed)
    with _torch_threads(config.num_threads):
        for epoch in range(config.epochs):
            order = torch.randperm(len(tokens), generator=generator)
            max_violation = config.max_violation and epoch >= config.warmup_epochs
            tensors = (pooled, tokens, pair_images)
            mean = _train_epoch(model, optimizer, tensors, order, epoch, max_violation, progress)
            model.history.append(mean)
            negatives = "hardest negative" if max_violation else "all negatives"
            logger.info(
                "epoch %d/%d: loss per pair %.4f (%s)", epoch + 1, config.epochs, mean, negatives
            )
    net.eval()
    return model


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count inside the block and restore it afterwards.

    The batches are small (about 128 x 300), so extra threads cost more in synchronisation than they
    save. On a shared 2-core machine, 2 threads made training about 3 times slower than 1.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_epoch(
    model: VSEModel, optimizer, tensors, order: torch.Tensor, epoch: int, max_violation, progress
) -> float:
    """Run one pass over the pairs in `order` and return the mean loss per pair."""
    config = model.config
    batches = order.split(config.batch_size)
    bar = tqdm(batches, desc=f"VSE++ epoch {epoch + 1}/{config.epochs}", disable=not progress)

    total = 0.0
    model.net.train()
    for batch in bar:
        loss = model._batch_loss(*tensors, batch, max_violation)
        optimizer.zero_grad()
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.net.parameters(), config.grad_clip)
        optimizer.step()

        total += loss.item()
        bar.set_postfix(loss=f"{loss.item() / len(batch):.4f}")
    return total / len(order)

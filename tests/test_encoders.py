"""Tests of mack.encoders: box checks, RoI pooling against a brute-force loop, the pretrained
EfficientNet-Lite0 encoder's determinism, and the feature cache's hits, misses and crash safety."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mack import encoders
from mack.encoders import (
    BoxError,
    EfficientNetLite0Encoder,
    FeatureCache,
    FeatureCacheError,
    RegionEncoder,
    RegionItem,
    add_context,
    check_boxes,
    roi_input_size,
    roi_pool,
)


class CountingEncoder(RegionEncoder):
    """Cheap stand-in encoder: features are box geometry times `scale`; counts encode calls."""

    dim = 3

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls = 0

    def encode(self, image, boxes):
        self.calls += 1
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        features = np.stack([boxes[:, 0] + boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3]], 1)
        return (features * self.scale).astype(np.float32)

    def settings(self):
        return {"encoder": "counting", "scale": self.scale}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # two threads on a busy 2-core machine are several times slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def noise_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, noise_image) -> str:
    path = tmp_path_factory.mktemp("images") / "noise.png"
    noise_image.save(path)
    return str(path)


# --- boxes -----------------------------------------------------------------------------------


def test_check_boxes_clips_to_image():
    boxes = check_boxes([[-5, -2, 50, 80], [10, 10, 20, 20]], width=40, height=30, where="img")
    np.testing.assert_array_equal(boxes, [[0, 0, 40, 30], [10, 10, 20, 20]])


def test_check_boxes_widens_thin_box():
    boxes = check_boxes([[10.0, 5.0, 10.2, 5.0], [39.9, 0, 40, 30]], width=40, height=30, where="x")
    np.testing.assert_allclose(boxes[0], [9.6, 4.5, 10.6, 5.5])
    np.testing.assert_allclose(boxes[1], [39.0, 0, 40.0, 30])


def test_check_boxes_empty():
    assert check_boxes([], 10, 10, "x").shape == (0, 4)


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([[0, 0, 5]], "shape"),
        ([[0, 0, np.nan, 5]], "box 0"),
        ([[0, 0, 5, 5], [6, 0, 5, 5]], "box 1"),
        ([[50, 0, 60, 5]], "overlapping"),
    ],
)
def test_check_boxes_rejects_invalid(boxes, message):
    with pytest.raises(BoxError, match=message) as error:
        check_boxes(boxes, width=40, height=30, where="photo.jpg")
    assert "photo.jpg" in str(error.value)


def test_add_context_grows_each_side():
    grown = add_context(np.array([[10.0, 20.0, 30.0, 60.0]]), 0.1)
    np.testing.assert_allclose(grown, [[8.0, 16.0, 32.0, 64.0]])


def test_roi_input_size_cases():
    assert roi_input_size(640, 480, 384) == (512, 384)
    assert roi_input_size(480, 640, 384) == (384, 512)
    # a very wide image: the long side is capped at 2 x 384, the short side rounds to 64
    assert roi_input_size(1000, 100, 384) == (768, 64)
    assert roi_input_size(20, 10, 384) == (768, 384)


# --- RoI pooling -----------------------------------------------------------------------------


def bilinear_reference(feature_map: np.ndarray, x: float, y: float, width: int, height: int):
    """Sample a (C, h, w) map at image point (x, y) with border clamping, by plain arithmetic."""
    channels, h, w = feature_map.shape
    u = x / width * w - 0.5  # continuous cell index; cell i is centred at i + 0.5 image cells
    v = y / height * h - 0.5
    u = min(max(u, 0.0), w - 1.0)
    v = min(max(v, 0.0), h - 1.0)
    u0, v0 = int(np.floor(u)), int(np.floor(v))
    u1, v1 = min(u0 + 1, w - 1), min(v0 + 1, h - 1)
    du, dv = u - u0, v - v0
    value = np.zeros(channels)
    for uu, vv, weight in (
        (u0, v0, (1 - du) * (1 - dv)),
        (u1, v0, du * (1 - dv)),
        (u0, v1, (1 - du) * dv),
        (u1, v1, du * dv),
    ):
        value += weight * feature_map[:, vv, uu]
    return value


def test_roi_pool_matches_bilinear_loop():
    rng = np.random.default_rng(1)
    feature_map = rng.normal(size=(5, 4, 6))
    width, height, samples = 192, 128, 3
    boxes = np.array([[0, 0, 192, 128], [10.5, 20, 50, 30], [150, 100, 192, 128], [3, 3, 4, 4]])

    pooled = roi_pool(torch.from_numpy(feature_map)[None], boxes, width, height, samples)

    for row, (x1, y1, x2, y2) in enumerate(boxes):
        expected = np.zeros(5)
        for i in range(samples):
            for j in range(samples):
                x = x1 + (j + 0.5) / samples * (x2 - x1)
                y = y1 + (i + 0.5) / samples * (y2 - y1)
                expected += bilinear_reference(feature_map, x, y, width, height)
        np.testing.assert_allclose(pooled[row], expected / samples**2, rtol=1e-10, atol=1e-12)


def test_roi_pool_of_linear_map_is_box_centre():
    # channel 0 is each cell's centre x in image pixels and channel 1 its centre y. Bilinear
    # sampling reproduces a linear function exactly, so the mean is the box centre.
    width, height, cells_x, cells_y = 320, 160, 10, 5
    xs = (np.arange(cells_x) + 0.5) * width / cells_x
    ys = (np.arange(cells_y) + 0.5) * height / cells_y
    feature_map = np.stack(np.meshgrid(xs, ys))  # (2, cells_y, cells_x)
    boxes = np.array([[40, 20, 200, 140], [100.0, 50.0, 101.0, 51.0]])

    pooled = roi_pool(torch.from_numpy(feature_map)[None], boxes, width, height, 14)

    np.testing.assert_allclose(pooled, [[120, 80], [100.5, 50.5]], atol=1e-9)


# --- the pretrained encoder ------------------------------------------------------------------


@pytest.fixture(scope="module")
def crop_encoder() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder("crop", image_size=64, batch_size=8)


@pytest.fixture(scope="module")
def roi_encoder() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder("roi", image_size=96)


def test_crop_same_input_same_output(crop_encoder, image_file):
    boxes = [[0, 0, 96, 72], [10, 5, 50, 40], [10, 5, 50, 40]]
    first = crop_encoder.encode(image_file, boxes)
    second = crop_encoder.encode(image_file, boxes)
    assert first.shape == (3, 1280)
    assert first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[1], first[2])


def test_crop_equals_precropped_image(crop_encoder, noise_image):
    # the crop of a box and the whole of an image holding exactly that crop give the same input
    box = (16, 8, 80, 56)
    from_box = crop_encoder.encode(noise_image, [box])
    from_crop = crop_encoder.encode(noise_image.crop(box), [[0, 0, 64, 48]])
    np.testing.assert_array_equal(from_box, from_crop)


def test_crop_same_pixels_elsewhere(crop_encoder, noise_image):
    # the same patch pasted at another place of another image gives the same features
    patch = noise_image.crop((16, 8, 80, 56))
    canvas = Image.new("RGB", (200, 150), (255, 0, 0))
    canvas.paste(patch, (100, 90))
    original = crop_encoder.encode(noise_image, [[16, 8, 80, 56]])
    moved = crop_encoder.encode(canvas, [[100, 90, 164, 138]])
    np.testing.assert_array_equal(original, moved)


def test_crop_rounds_box_outwards(crop_encoder, noise_image):
    fractional = crop_encoder.encode(noise_image, [[16.4, 8.9, 79.2, 55.01]])
    whole = crop_encoder.encode(noise_image, [[16, 8, 80, 56]])
    np.testing.assert_array_equal(fractional, whole)


def test_roi_same_input_same_output(roi_encoder, image_file):
    boxes = [[0, 0, 96, 72], [10, 5, 50, 40], [10, 5, 50, 40]]
    first = roi_encoder.encode(image_file, boxes)
    second = roi_encoder.encode(image_file, boxes)
    assert first.shape == (3, 1280)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[1], first[2])


def test_roi_one_forward_per_image(roi_encoder, image_file):
    before = roi_encoder.forward_calls
    roi_encoder.encode(image_file, [[0, 0, 10, 10]] * 40)
    assert roi_encoder.forward_calls == before + 1


def test_crop_batches_boxes(crop_encoder, image_file):
    before = crop_encoder.forward_calls
    crop_encoder.encode(image_file, [[0, 0, 30, 30]] * 17)  # batch_size 8: batches of 8, 8, 1
    assert crop_encoder.forward_calls == before + 3


def test_encoder_no_boxes_skips_network(crop_encoder, image_file):
    before = crop_encoder.forward_calls
    assert crop_encoder.encode(image_file, np.zeros((0, 4))).shape == (0, 1280)
    assert crop_encoder.forward_calls == before


def test_encoder_settings_name_what_changes_features():
    crop = EfficientNetLite0Encoder("crop").settings()
    roi = EfficientNetLite0Encoder("roi", image_size=448, batch_size=3).settings()
    assert crop["method"] == "crop"
    assert crop["image_size"] == 160
    assert EfficientNetLite0Encoder().settings()["method"] == "roi"
    assert EfficientNetLite0Encoder().settings()["image_size"] == 320
    assert roi["image_size"] == 448
    assert roi["roi_samples"] == 14
    assert "batch_size" not in roi
    assert crop["normalisation"] == "(rgb - 127) / 128"


def test_encoder_rejects_unknown_method():
    with pytest.raises(ValueError, match="crop, roi"):
        EfficientNetLite0Encoder("grid")


def test_encoder_missing_weights_message(tmp_path, image_file):
    encoder = EfficientNetLite0Encoder("crop", weights_path=tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        encoder.encode(image_file, [[0, 0, 10, 10]])


# --- the feature cache -----------------------------------------------------------------------


def test_cache_second_call_computes_nothing(tmp_path, image_file):
    cache = FeatureCache(tmp_path / "features")
    encoder = CountingEncoder()
    boxes = np.array([[1, 2, 30, 40], [0, 0, 96, 72]])

    first = cache.features(encoder, image_file, boxes)
    second = cache.features(encoder, image_file, boxes)

    assert encoder.calls == 1
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, CountingEncoder().encode(image_file, boxes))


def test_cache_survives_new_instance(tmp_path, image_file):
    FeatureCache(tmp_path).features(CountingEncoder(), image_file, [[1, 2, 3, 4]])
    encoder = CountingEncoder()
    FeatureCache(tmp_path).features(encoder, image_file, [[1, 2, 3, 4]])
    assert encoder.calls == 0


def test_cache_changed_settings_recompute(tmp_path, image_file):
    cache = FeatureCache(tmp_path)
    cache.features(CountingEncoder(scale=1.0), image_file, [[1, 2, 3, 4]])
    encoder = CountingEncoder(scale=2.0)
    features = cache.features(encoder, image_file, [[1, 2, 3, 4]])
    assert encoder.calls == 1
    np.testing.assert_array_equal(features, [[6, 4, 8]])


def test_cache_changed_boxes_or_key_recompute(tmp_path, image_file):
    cache = FeatureCache(tmp_path)
    encoder = CountingEncoder()
    cache.features(encoder, image_file, [[1, 2, 3, 4]])
    cache.features(encoder, image_file, [[1, 2, 3, 5]])
    cache.features(encoder, image_file, [[1, 2, 3, 4]], key="coco:1")
    assert encoder.calls == 3
    assert cache.misses == 3


def test_cache_crash_during_write_leaves_no_entry(tmp_path, image_file, monkeypatch):
    cache = FeatureCache(tmp_path)

    def save_then_crash(handle, array, allow_pickle=False):
        handle.write(b"\x93NUMPY partial")
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(encoders.np, "save", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache.features(CountingEncoder(), image_file, [[1, 2, 3, 4]])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

    monkeypatch.undo()
    encoder = CountingEncoder()
    cache.features(encoder, image_file, [[1, 2, 3, 4]])
    assert encoder.calls == 1


def test_cache_ignores_stale_tmp_file(tmp_path, image_file):
    cache = FeatureCache(tmp_path)
    encoder = CountingEncoder()
    key = cache.entry_key(image_file, np.array([[1, 2, 3, 4]]), encoder.settings())
    entry = cache.path(key)
    entry.parent.mkdir(parents=True)
    # what a process killed inside atomic_write leaves behind
    (entry.parent / f".{entry.name}.abc123.tmp").write_bytes(b"\x93NUMPY half")

    features = cache.features(encoder, image_file, [[1, 2, 3, 4]])

    assert encoder.calls == 1
    np.testing.assert_array_equal(np.load(entry), features)


def test_cache_recomputes_corrupt_entry(tmp_path, image_file, caplog):
    cache = FeatureCache(tmp_path)
    cache.features(CountingEncoder(), image_file, [[1, 2, 3, 4]])
    (entry,) = tmp_path.rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[:20])

    encoder = CountingEncoder()
    with caplog.at_level(logging.WARNING, logger="mack.encoders"):
        cache.features(encoder, image_file, [[1, 2, 3, 4]])
    assert encoder.calls == 1
    assert "recomputing" in caplog.text


def test_cache_pil_image_needs_key(tmp_path, noise_image):
    cache = FeatureCache(tmp_path)
    with pytest.raises(FeatureCacheError, match="key="):
        cache.features(CountingEncoder(), noise_image, [[1, 2, 3, 4]])
    assert cache.features(CountingEncoder(), noise_image, [[1, 2, 3, 4]], key="noise").shape == (
        1,
        3,
    )


def test_cache_rejects_wrong_encoder_shape(tmp_path, image_file):
    class ShortEncoder(CountingEncoder):
        def encode(self, image, boxes):
            return super().encode(image, boxes)[:0]

    with pytest.raises(ValueError, match="expected \\(1, 3\\)"):
        FeatureCache(tmp_path).features(ShortEncoder(), image_file, [[1, 2, 3, 4]])


def test_encode_many_with_cache(tmp_path, image_file, caplog):
    cache = FeatureCache(tmp_path)
    encoder = CountingEncoder()
    items = [(image_file, [[1, 2, 3, 4]]), RegionItem(image_file, np.array([[0, 0, 9, 9]]), "k")]

    plain = encoder.encode_many(items, progress=False)
    with caplog.at_level(logging.INFO, logger="mack.encoders"):
        cached = encoder.encode_many(items, cache=cache, progress=False)
        again = encoder.encode_many(items, cache=cache, progress=False)

    assert encoder.calls == 4
    assert "2 hits, 2 misses" in caplog.text
    for a, b, c in zip(plain, cached, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)

"""The latent visual space of the synthetic world and its fixed non-linear map to region features.

A concept's latent vector lies near its semantic group's centre. A region's latent is its object's
vector plus one appearance mode of the object, plus its attributes' vectors, plus noise whose scale
depends on the object. A fixed random two-layer ReLU network maps latents to non-negative features.
Each target dataset applies its own rotation, scaling and shift to the latents before that map.
docs/synthetic-world.md gives the equations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.linalg import expm

from mack.synthetic import vocabulary

# Fixed ids of the random streams, so that changing one part of the world leaves the others as they
# were (for example, a different caption count does not move any feature).
STREAM_CONCEPTS = 1
STREAM_FEATURE_MAP = 2
STREAM_FEATURE_OUTPUT = 3
STREAM_DISTORTION = 4
STREAM_VG = 10
STREAM_TARGET = 20


@dataclass(frozen=True)
class WorldParams:
    """Constants of the generative model (the values documented in docs/synthetic-world.md)."""

    latent_dim: int = 64
    hidden_dim: int = 512
    group_scale: float = 1.0  # per-dimension std of a semantic group's centre
    concept_scale: float = 0.6  # per-dimension std of a concept around its group centre
    attribute_weight: float = 0.7  # scale of an adjective's vector inside a region latent
    mode_scale: float = 0.7  # per-dimension std of an appearance mode around the concept
    max_modes: int = 4
    noise_scale: float = 0.8  # median per-dimension std of the appearance noise
    noise_spread: float = 0.35  # std of log(noise scale) across concepts
    image_offset_scale: float = 0.25  # per-dimension std of an image-wide latent offset
    vg_label_noise: float = 0.05  # share of knowledge-source regions written with a wrong name
    distortion_angle: float = 0.5  # R = expm(angle * K), K skew with entry variance 1 / D
    distortion_log_scale: float = 0.25  # std of log per-dimension scaling
    distortion_shift: float = 0.4  # per-dimension std of the latent shift

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden_dim", "max_modes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"WorldParams.{name} must be a positive integer, got {value!r}")
        for name, value in asdict(self).items():
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"WorldParams.{name} must be finite and >= 0, got {value!r}")
        if self.vg_label_noise > 1:
            raise ValueError(
                f"WorldParams.vg_label_noise must be from 0 to 1, got {self.vg_label_noise!r}"
            )


def stream(seed: int, *keys: int) -> np.random.Generator:
    """Return the random generator of one named part of the world (seed plus stream keys)."""
    return np.random.default_rng([seed, *keys])


@dataclass
class ConceptSpace:
    """Latent vectors of every concept.

    nouns / adjectives: concept names; noun_groups: (n_nouns,) int group index per noun;
    noun_latents: (n_nouns, D) float64; noun_modes: (n_nouns, max_modes, D) offsets;
    mode_weights: (n_nouns, max_modes) probabilities (0 for unused modes);
    noise_scales: (n_nouns,) per-dimension noise std; adjective_latents: (n_adjectives, D),
    already multiplied by attribute_weight; group_centres: (n_groups, D).
    """

    params: WorldParams
    nouns: list[str]
    adjectives: list[str]
    noun_groups: np.ndarray
    adjective_groups: np.ndarray
    group_names: list[str]
    group_centres: np.ndarray
    noun_latents: np.ndarray
    noun_modes: np.ndarray
    mode_weights: np.ndarray
    noise_scales: np.ndarray
    adjective_latents: np.ndarray

    @classmethod
    def create(cls, seed: int, params: WorldParams) -> ConceptSpace:
        """Draw group centres, concept vectors, appearance modes and noise scales."""
        rng = stream(seed, STREAM_CONCEPTS)
        dim = params.latent_dim
        group_names = list(vocabulary.NOUN_GROUPS) + list(vocabulary.ADJECTIVE_GROUPS)
        group_index = {name: i for i, name in enumerate(group_names)}
        centres = rng.normal(0.0, params.group_scale, (len(group_names), dim))

        nouns = vocabulary.nouns()
        word_group = vocabulary.word_groups()
        noun_groups = np.array([group_index[word_group[w]] for w in nouns], dtype=np.int64)
        noun_latents = centres[noun_groups] + rng.normal(0, params.concept_scale, (len(nouns), dim))

        n_modes = rng.integers(1, params.max_modes + 1, len(nouns))
        modes = rng.normal(0.0, params.mode_scale, (len(nouns), params.max_modes, dim))
        weights = rng.dirichlet(np.full(params.max_modes, 2.0), len(nouns))
        weights[np.arange(params.max_modes)[None, :] >= n_modes[:, None]] = 0.0
        weights /= weights.sum(axis=1, keepdims=True)
        noise = params.noise_scale * np.exp(rng.normal(0.0, params.noise_spread, len(nouns)))

        adjectives = vocabulary.adjectives()
        adjective_groups = np.array([group_index[word_group[w]] for w in adjectives], np.int64)
        offsets = rng.normal(0.0, params.concept_scale, (len(adjectives), dim))
        adjective_latents = params.attribute_weight * (centres[adjective_groups] + offsets)

        return cls(
            params,
            nouns,
            adjectives,
            noun_groups,
            adjective_groups,
            group_names,
            centres,
            noun_latents,
            modes,
            weights,
            noise,
            adjective_latents,
        )

    def instance_latents(
        self, rng: np.random.Generator, nouns: np.ndarray, attributes: list[list[int]]
    ) -> np.ndarray:
        """Draw one appearance per object instance: concept + mode + attributes, without noise.

        nouns: (n,) noun indices; attributes: n lists of adjective indices. Returns (n, D).
        """
        cumulative = np.cumsum(self.mode_weights[nouns], axis=1)
        draws = rng.random(len(nouns))
        modes = np.minimum((draws[:, None] > cumulative).sum(axis=1), self.params.max_modes - 1)
        latents = self.noun_latents[nouns] + self.noun_modes[nouns, modes]
        for row, adjective_ids in enumerate(attributes):
            if adjective_ids:
                latents[row] += self.adjective_latents[adjective_ids].sum(axis=0)
        return latents

    def appearance_noise(
        self, rng: np.random.Generator, nouns: np.ndarray, factor: float | np.ndarray = 1.0
    ) -> np.ndarray:
        """Draw appearance noise for regions of the given nouns: (n, D), std noise_scales * factor."""
        scales = self.noise_scales[nouns] * factor
        return rng.normal(0.0, 1.0, (len(nouns), self.params.latent_dim)) * np.reshape(
            scales, (-1, 1)
        )


@dataclass
class FeatureMap:
    """Fixed random two-layer ReLU network from latents (n, D) to features (n, F) float32 >= 0."""

    hidden_weights: np.ndarray  # (H, D)
    hidden_bias: np.ndarray  # (H,)
    output_weights: np.ndarray  # (F, H)
    output_bias: np.ndarray  # (F,)

    @classmethod
    def create(cls, seed: int, dim: int, params: WorldParams) -> FeatureMap:
        """Draw the network. The hidden layer does not depend on `dim`."""
        rng = stream(seed, STREAM_FEATURE_MAP)
        hidden_weights = rng.normal(
            0, 1 / np.sqrt(params.latent_dim), (params.hidden_dim, params.latent_dim)
        )
        hidden_bias = rng.normal(0.0, 0.5, params.hidden_dim)

        out = stream(seed, STREAM_FEATURE_OUTPUT, dim)
        output_weights = out.normal(0, np.sqrt(2 / params.hidden_dim), (dim, params.hidden_dim))
        output_bias = out.normal(0.2, 0.3, dim)
        return cls(hidden_weights, hidden_bias, output_weights, output_bias)

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        """Map latents (n, D) to features (n, F) float32."""
        hidden = np.maximum(latents @ self.hidden_weights.T + self.hidden_bias, 0.0)
        features = np.maximum(hidden @ self.output_weights.T + self.output_bias, 0.0)
        return features.astype(np.float32)


@dataclass
class Distortion:
    """Dataset-specific affine change of the latents: h' = (h * scales) @ rotation.T + shift."""

    rotation: np.ndarray  # (D, D) orthogonal
    scales: np.ndarray  # (D,)
    shift: np.ndarray  # (D,)

    @classmethod
    def create(cls, seed: int, dataset_id: int, params: WorldParams) -> Distortion:
        """Draw a rotation expm(angle * K) (K skew, entry variance 1 / D), a scaling and a shift."""
        rng = stream(seed, STREAM_DISTORTION, dataset_id)
        dim = params.latent_dim
        generator = rng.normal(0.0, 1.0, (dim, dim))
        skew = (generator - generator.T) / np.sqrt(2 * dim)
        rotation = expm(params.distortion_angle * skew)
        scales = np.exp(rng.normal(0.0, params.distortion_log_scale, dim))
        shift = rng.normal(0.0, params.distortion_shift, dim)
        return cls(rotation, scales, shift)

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        """Apply the distortion to latents (n, D)."""
        return (latents * self.scales) @ self.rotation.T + self.shift

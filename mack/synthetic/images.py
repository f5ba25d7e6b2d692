"""Images of the synthetic world: which objects, attributes and regions each image contains.

Knowledge-source (Visual Genome-like) images carry annotated boxes. Target-dataset images carry
exactly `REGIONS_PER_IMAGE` region latents (objects, object parts, background stuff, distractor
objects and clutter) plus the plan that the captions describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mack.synthetic import vocabulary
from mack.synthetic.world import ConceptSpace

REGIONS_PER_IMAGE = 36

# How often each noun group appears in the knowledge source, relative to the others: it biases
# which nouns get the top ranks of the long-tailed frequency list.
VG_GROUP_COMMONNESS: dict[str, float] = {
    "nature": 4, "buildings": 4, "people": 4, "clothing": 3, "body": 3, "street": 2,
    "vehicles": 2, "furniture": 1.5, "household": 1.5, "animals": 1.5, "food": 1, "kitchen": 1,
    "electronics": 1, "sports": 1, "accessories": 1, "tools": 0.5, "toys and music": 0.5,
}  # fmt: skip

ZIPF_SHIFT = 5.0  # flattens the head of the noun frequency list (Zipf-Mandelbrot shift)
ADJECTIVE_ZIPF = 3.0  # within an adjective group, weight 1 / (position + 1)^ADJECTIVE_ZIPF

# Probability that an object instance has 0, 1, 2 or 3 attributes.
ATTRIBUTE_COUNT_PROBS = (0.3, 0.4, 0.22, 0.08)
VG_ATTRIBUTE_ANNOTATED = 0.75  # share of an object's true attributes that the annotation lists
VG_NAME_CAPITALISED = 0.03  # share of names written with a capital first letter


@dataclass(frozen=True)
class DatasetProfile:
    """Concept distribution of one target dataset: its scenes and the noun groups it favours."""

    name: str
    dataset_id: int
    scene_weights: dict[str, float]
    group_boosts: dict[str, float]
    flattening: float = 0.5  # exponent applied to knowledge-source frequencies
    concept_jitter: float = 0.5  # std of a log-normal factor per concept and dataset


F30K_LIKE = DatasetProfile(
    "f30k_like", 1,
    {"street": 3, "park": 3, "beach": 2, "snow": 1.5, "farm": 1, "waterside": 1.5,
     "kitchen": 0.5, "dining": 0.5, "living room": 0.7, "office": 0.4, "bathroom": 0.1,
     "station": 0.8},
    {"people": 3, "clothing": 2, "body": 1.5, "animals": 1.2, "sports": 1.5},
)  # fmt: skip
COCO_LIKE = DatasetProfile(
    "coco_like", 2,
    {"street": 2, "park": 1, "beach": 0.7, "snow": 0.8, "farm": 1, "waterside": 0.7,
     "kitchen": 2.5, "dining": 2.5, "living room": 2, "office": 1.5, "bathroom": 1.5,
     "station": 1.2},
    {"food": 2, "kitchen": 2, "furniture": 1.5, "vehicles": 1.5, "electronics": 1.5},
)  # fmt: skip
DATASETS = (F30K_LIKE, COCO_LIKE)


def sample_index(rng: np.random.Generator, cumulative: np.ndarray, size: int | None = None):
    """Draw indices from a distribution given by its cumulative sums (last entry 1)."""
    draws = rng.random(size)
    return np.minimum(np.searchsorted(cumulative, draws, side="right"), len(cumulative) - 1)


def knowledge_frequencies(space: ConceptSpace, seed_rng: np.random.Generator, exponent: float):
    """Return (n_nouns,) probabilities p_k ~ (rank_k + 1 + ZIPF_SHIFT)^-exponent.

    The ranking is a random order biased towards the commoner groups (VG_GROUP_COMMONNESS).
    """
    groups = vocabulary.word_groups()
    weights = np.array([VG_GROUP_COMMONNESS[groups[noun]] for noun in space.nouns])
    keys = seed_rng.random(len(weights)) ** (1.0 / weights)
    order = np.argsort(-keys, kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order))
    probs = (ranks + 1.0 + ZIPF_SHIFT) ** -exponent
    return probs / probs.sum()


class AttributeSampler:
    """Draws the true attributes of object instances from the adjective groups their noun allows."""

    def __init__(self, space: ConceptSpace):
        adjective_index = {word: i for i, word in enumerate(space.adjectives)}
        by_noun_group = {}
        for noun_group, group_names in vocabulary.ATTRIBUTE_GROUPS.items():
            members = [
                [adjective_index[a] for a in vocabulary.ADJECTIVE_GROUPS[g]] for g in group_names
            ]
            group_weights = np.array([vocabulary.ATTRIBUTE_GROUP_WEIGHTS[g] for g in group_names])
            # Within a group, the list order is the commonness order.
            within = [np.cumsum(np.arange(1, len(m) + 1) ** -ADJECTIVE_ZIPF) for m in members]
            within = [c / c[-1] for c in within]
            by_noun_group[noun_group] = (members, group_weights, within)
        word_groups = vocabulary.word_groups()
        self.options = [by_noun_group[word_groups[noun]] for noun in space.nouns]
        self.count_cumulative = np.cumsum(ATTRIBUTE_COUNT_PROBS)

    def sample(self, rng: np.random.Generator, noun: int) -> list[int]:
        """Return the adjective indices of one instance of `noun`, at most one per adjective group."""
        members, group_weights, within = self.options[noun]
        count = min(int(sample_index(rng, self.count_cumulative)), len(members))
        if count == 0:
            return []
        # Weighted sampling of `count` groups without replacement: the largest u^(1/weight) keys.
        keys = rng.random(len(members)) ** (1.0 / group_weights)
        chosen = np.sort(np.argsort(-keys, kind="stable")[:count])
        draws = rng.random(count)
        return [
            members[g][int(np.searchsorted(within[g], d, side="right"))]
            for g, d in zip(chosen, draws, strict=True)
        ]


@dataclass
class VGObjectRecord:
    """One annotated box of a knowledge-source image."""

    object_id: int
    name: str
    attributes: list[str]
    box: tuple[int, int, int, int]  # x, y, w, h in pixels


@dataclass
class VGImageRecord:
    """One knowledge-source image: size, annotated objects and their region latents (n, D)."""

    image_id: int
    width: int
    height: int
    objects: list[VGObjectRecord]
    latents: np.ndarray


def random_box(rng: np.random.Generator, width: int, height: int, large: bool) -> tuple:
    """Return an (x, y, w, h) integer box inside the image; `large` boxes cover 40-100% per side."""
    low = 0.4 if large else 0.05
    high = 1.0 if large else 0.5
    w = max(2, int(width * rng.uniform(low, high)))
    h = max(2, int(height * rng.uniform(low, high)))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    return x, y, w, h


class KnowledgeSourceSampler:
    """Draws knowledge-source images: nouns from the long-tailed frequencies, with label noise."""

    def __init__(self, space: ConceptSpace, noun_probs: np.ndarray, objects_per_image: float):
        self.space = space
        self.attributes = AttributeSampler(space)
        self.noun_cumulative = np.cumsum(noun_probs)
        self.noun_cumulative /= self.noun_cumulative[-1]
        self.objects_per_image = objects_per_image
        self.stuff = {i for i, noun in enumerate(space.nouns) if noun in vocabulary.STUFF_NOUNS}
        groups = space.noun_groups
        self.same_group = [np.flatnonzero(groups == g) for g in groups]

    def image(self, rng: np.random.Generator, image_id: int, first_object_id: int) -> VGImageRecord:
        """Draw one image with its annotated objects and their region latents."""
        space = self.space
        width = int(rng.integers(400, 1025))
        height = int(width * rng.uniform(0.6, 1.35))
        n_objects = 1 + int(rng.poisson(self.objects_per_image - 1))
        nouns = sample_index(rng, self.noun_cumulative, n_objects)
        true_attributes = [self.attributes.sample(rng, int(n)) for n in nouns]

        latents = space.instance_latents(rng, nouns, true_attributes)
        latents += space.appearance_noise(rng, nouns)
        latents += rng.normal(0.0, space.params.image_offset_scale, space.params.latent_dim)

        objects = []
        for row, noun in enumerate(nouns):
            name = self._written_name(rng, int(noun))
            listed = rng.random(len(true_attributes[row])) < VG_ATTRIBUTE_ANNOTATED
            attributes = [
                space.adjectives[a]
                for a, keep in zip(true_attributes[row], listed, strict=True)
                if keep
            ]
            box = random_box(rng, width, height, large=int(noun) in self.stuff)
            objects.append(VGObjectRecord(first_object_id + row, name, attributes, box))
        return VGImageRecord(image_id, width, height, objects, latents)

    def _written_name(self, rng: np.random.Generator, noun: int) -> str:
        """Return the annotated name: usually the noun, sometimes a wrong one (label noise)."""
        if rng.random() < self.space.params.vg_label_noise:
            if rng.random() < 0.5:
                noun = int(rng.choice(self.same_group[noun]))
            else:
                noun = int(rng.integers(len(self.space.nouns)))
        name = self.space.nouns[noun]
        if rng.random() < VG_NAME_CAPITALISED:
            name = name[0].upper() + name[1:]
        return name


@dataclass
class Mention:
    """Something a caption may describe: a noun, how many instances, their shared attributes."""

    noun: int
    count: int
    attributes: list[int]


@dataclass
class TargetImage:
    """One target-dataset image: region latents (36, D) before distortion, and its caption plan."""

    scene: str
    objects: list[Mention]  # salient objects, most salient first
    stuff: list[Mention] = field(default_factory=list)
    latents: np.ndarray | None = None


class TargetSampler:
    """Draws target-dataset images from a dataset profile (scenes, favoured groups)."""

    def __init__(
        self,
        space: ConceptSpace,
        profile: DatasetProfile,
        noun_probs: np.ndarray,
        seed_rng: np.random.Generator,
    ):
        self.space = space
        self.profile = profile
        self.attributes = AttributeSampler(space)
        self.scenes = list(vocabulary.SCENES)
        weights = np.array([profile.scene_weights[s] for s in self.scenes], dtype=np.float64)
        self.scene_cumulative = np.cumsum(weights / weights.sum())

        noun_index = {noun: i for i, noun in enumerate(space.nouns)}
        groups = vocabulary.word_groups()
        base = noun_probs**profile.flattening
        base = base * np.exp(seed_rng.normal(0.0, profile.concept_jitter, len(base)))
        boosts = np.array([profile.group_boosts.get(groups[n], 1.0) for n in space.nouns])
        not_stuff = np.array([n not in vocabulary.STUFF_NOUNS for n in space.nouns])
        self.object_cumulative = []
        self.any_cumulative = np.cumsum(base * not_stuff) / (base * not_stuff).sum()
        for scene in self.scenes:
            group_weights = vocabulary.SCENES[scene][1]
            in_scene = np.array([group_weights.get(groups[n], 0.02) for n in space.nouns])
            weights = base * boosts * in_scene * not_stuff
            self.object_cumulative.append(np.cumsum(weights) / weights.sum())
        self.scene_stuff = {
            s: np.array([noun_index[n] for n in vocabulary.SCENES[s][0]]) for s in self.scenes
        }

    def image(self, rng: np.random.Generator) -> TargetImage:
        """Draw one image: its plan and its `REGIONS_PER_IMAGE` region latents."""
        scene_id = int(sample_index(rng, self.scene_cumulative))
        objects = self._salient_objects(rng, scene_id)
        stuff_ids = rng.permutation(self.scene_stuff[self.scenes[scene_id]])[: rng.integers(2, 4)]
        stuff = [Mention(int(n), 1, self.attributes.sample(rng, int(n))) for n in stuff_ids]

        image = TargetImage(self.scenes[scene_id], objects, stuff)
        image.latents = self._region_latents(rng, image)
        return image

    def _salient_objects(self, rng: np.random.Generator, scene_id: int) -> list[Mention]:
        """Return up to 5 distinct salient nouns. About a quarter appear two or three times."""
        n_types = 1 + int(rng.binomial(4, 0.5))
        nouns: list[int] = []
        for _ in range(4 * n_types):
            noun = int(sample_index(rng, self.object_cumulative[scene_id]))
            if noun not in nouns:
                nouns.append(noun)
            if len(nouns) == n_types:
                break
        counts = 1 + sample_index(rng, np.array([0.75, 0.92, 1.0]), len(nouns))
        return [
            Mention(n, int(c), self.attributes.sample(rng, n))
            for n, c in zip(nouns, counts, strict=True)
        ]

    def _region_latents(self, rng: np.random.Generator, image: TargetImage) -> np.ndarray:
        """Build the (36, D) region latents in priority order, keep the first 36, shuffle them."""
        space = self.space
        groups: list[np.ndarray] = []

        instances = [m for m in image.objects for _ in range(m.count)]
        nouns = np.array([m.noun for m in instances])
        objects = space.instance_latents(rng, nouns, [m.attributes for m in instances])
        groups.append(objects + space.appearance_noise(rng, nouns))

        stuff_nouns = np.array([m.noun for m in image.stuff])
        stuff = space.instance_latents(rng, stuff_nouns, [m.attributes for m in image.stuff])
        groups.append(stuff + space.appearance_noise(rng, stuff_nouns))
        groups.append(self._distractors(rng))

        parts = np.repeat(
            np.arange(len(instances)), np.minimum(rng.poisson(1.2, len(instances)), 3)
        )
        shrink = rng.uniform(0.5, 0.9, (len(parts), 1))
        groups.append(shrink * objects[parts] + space.appearance_noise(rng, nouns[parts], 1.5))

        extra = np.repeat(np.arange(len(stuff_nouns)), rng.integers(1, 4, len(stuff_nouns)))
        groups.append(stuff[extra] + space.appearance_noise(rng, stuff_nouns[extra]))

        latents = np.concatenate(groups)[:REGIONS_PER_IMAGE]
        missing = REGIONS_PER_IMAGE - len(latents)
        if missing > 0:
            latents = np.concatenate([latents, self._clutter(rng, missing)])
        latents += rng.normal(0.0, space.params.image_offset_scale, space.params.latent_dim)
        return latents[rng.permutation(REGIONS_PER_IMAGE)]

    def _distractors(self, rng: np.random.Generator) -> np.ndarray:
        """Return 3-6 regions of small objects that no caption mentions: (n, D)."""
        nouns = sample_index(rng, self.any_cumulative, int(rng.integers(3, 7)))
        attributes = [self.attributes.sample(rng, int(n)) for n in nouns]
        latents = self.space.instance_latents(rng, nouns, attributes)
        return latents + self.space.appearance_noise(rng, nouns)

    def _clutter(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Return n background regions: a weak trace of a random concept under heavy noise."""
        nouns = rng.integers(0, len(self.space.nouns), n)
        weight = rng.uniform(0.2, 0.7, (n, 1))
        return weight * self.space.noun_latents[nouns] + self.space.appearance_noise(
            rng, nouns, 1.5
        )

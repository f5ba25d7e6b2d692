"""Template captions for target-dataset images.

A caption mentions one to three of an image's salient objects, some of their attributes and
sometimes the background. Templates vary articles, numbers and plurals, verbs and prepositions.
Some words are synonyms outside the knowledge ("puppy" for "dog") or other words the knowledge
lacks ("picture", "sunny"). Captions use the tokenised style of SCAN precomp files: a capital first
letter and a space before the final full stop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from lemminflect import getInflection

from mack.synthetic import vocabulary
from mack.synthetic.images import Mention, TargetImage
from mack.synthetic.world import ConceptSpace

CAPTIONS_PER_IMAGE = 5
MENTION_COUNT_PROBS = (0.3, 0.45, 0.25)  # captions naming 1, 2 or 3 objects
ADJECTIVE_MENTIONED = 0.45  # chance that a caption names one of an object's attributes
SYNONYM_USED = 0.2
CAPTION_ONLY_ADJECTIVE_USED = 0.07
FILLER_USED = 0.15
STUFF_MENTIONED = 0.5

# English order of adjective groups before a noun ("a small old wooden chair").
ADJECTIVE_ORDER = ("sizes", "states", "textures", "ages", "shapes", "colours", "patterns",
                   "materials")  # fmt: skip

PEOPLE_VERBS = ("sitting on", "standing next to", "holding", "looking at", "walking past",
                "playing with", "leaning on", "carrying", "riding", "pointing at")  # fmt: skip
ANIMAL_VERBS = ("standing near", "lying on", "walking past", "sitting next to", "looking at",
                "running toward")  # fmt: skip
THING_RELATIONS = ("next to", "on", "in front of", "beside", "behind", "near", "under")
STANDALONE_VERBS = ("standing", "sitting", "walking", "waiting", "resting")
PLACE_PREPOSITIONS = ("on", "in", "near", "by", "beside")
OPENERS = ("A picture of", "A photo of", "An image of", "A view of", "A scene with")
FILLERS = ("on a sunny day", "in the background", "in the afternoon", "in the distance",
           "at the side")  # fmt: skip
NUMBERS = {2: "two", 3: "three"}
DESCRIBING_ADJECTIVES = ("beautiful", "nice", "pretty", "cute", "lovely")  # outside the knowledge


@dataclass
class Caption:
    """A caption and the knowledge units it contains: (noun, adjectives) concept names."""

    text: str
    units: list[tuple[str, tuple[str, ...]]]


def indefinite_article(word: str) -> str:
    """Return "a" or "an" for the word that follows the article."""
    if word[0] in "aeiou" and not word.startswith(("uni", "use", "eu", "one")):
        return "an"
    return "a"


@functools.lru_cache(maxsize=4096)
def plural(word: str) -> str:
    """Return the plural of a (possibly multi-word) noun by inflecting its last word."""
    *head, last = word.split()
    forms = getInflection(last, tag="NNS")
    return " ".join([*head, forms[0] if forms else last + "s"])


class CaptionWriter:
    """Writes the captions of target images from their plans (see TargetImage)."""

    def __init__(self, space: ConceptSpace):
        self.space = space
        groups = vocabulary.word_groups()
        self.noun_groups = [groups[n] for n in space.nouns]
        rank = {g: i for i, g in enumerate(ADJECTIVE_ORDER)}
        self.adjective_rank = [rank[groups[a]] for a in space.adjectives]
        self.mention_cumulative = np.cumsum(MENTION_COUNT_PROBS)

    def captions(self, rng: np.random.Generator, image: TargetImage) -> list[Caption]:
        """Return `CAPTIONS_PER_IMAGE` captions of one image."""
        return [self.caption(rng, image) for _ in range(CAPTIONS_PER_IMAGE)]

    def caption(self, rng: np.random.Generator, image: TargetImage) -> Caption:
        """Return one caption naming some of the image's objects and maybe its background."""
        n = 1 + int(np.searchsorted(self.mention_cumulative, rng.random(), side="right"))
        n = min(n, len(image.objects), 3)
        salience = 0.6 ** np.arange(len(image.objects))
        chosen = np.sort(
            rng.choice(len(image.objects), n, replace=False, p=salience / salience.sum())
        )
        units: list[tuple[str, tuple[str, ...]]] = []
        phrases = [
            self._noun_phrase(rng, image.objects[i], units, position > 0 and rng.random() < 0.3)
            for position, i in enumerate(chosen)
        ]

        place = ""
        if image.stuff and rng.random() < STUFF_MENTIONED:
            stuff = image.stuff[int(rng.integers(len(image.stuff)))]
            preposition = PLACE_PREPOSITIONS[int(rng.integers(len(PLACE_PREPOSITIONS)))]
            place = f"{preposition} {self._noun_phrase(rng, stuff, units, definite=True)}"
        filler = FILLERS[int(rng.integers(len(FILLERS)))] if rng.random() < FILLER_USED else ""

        subject = image.objects[chosen[0]]
        text = self._sentence(rng, phrases, subject, place, filler)
        return Caption(text[0].upper() + text[1:] + " .", units)

    def _sentence(self, rng, phrases: list[str], subject: Mention, place: str, filler: str) -> str:
        """Join noun phrases, place and filler with one of the templates for their number."""
        plural_subject = (
            subject.count > 1 or self.space.nouns[subject.noun] in vocabulary.PLURAL_NOUNS
        )
        be = "are" if plural_subject else "is"
        tail = " ".join(part for part in (place, filler) if part)
        choice = int(rng.integers(3))
        if len(phrases) == 1:
            templates = (
                f"{phrases[0]} {be} {self._standalone(subject)} {tail}",
                f"there {be} {phrases[0]} {tail}",
                f"{self._opener(rng)} {phrases[0]} {tail}",
            )
        elif len(phrases) == 2:
            templates = (
                f"{phrases[0]} {be} {self._relation(rng, subject)} {phrases[1]} {tail}",
                f"{phrases[0]} with {phrases[1]} {tail}",
                f"{self._opener(rng)} {phrases[0]} and {phrases[1]} {tail}",
            )
        else:
            templates = (
                f"{phrases[0]} , {phrases[1]} and {phrases[2]} {tail}",
                f"{phrases[0]} {be} {self._relation(rng, subject)} {phrases[1]} with {phrases[2]} {tail}",
                f"{phrases[0]} and {phrases[1]} are {self._relation(rng, None)} {phrases[2]} {tail}",
            )
        return " ".join(templates[choice].split())

    def _noun_phrase(self, rng, mention: Mention, units: list, definite: bool) -> str:
        """Return a phrase such as "a small brown dog" or "two puppies", and record its unit.

        The unit (noun, adjectives) is appended to `units` unless a synonym replaced the noun.
        """
        noun = self.space.nouns[mention.noun]
        named = [a for a in mention.attributes if rng.random() < ADJECTIVE_MENTIONED][:2]
        named.sort(key=lambda a: self.adjective_rank[a])
        adjectives = [self.space.adjectives[a] for a in named]
        word = noun
        if noun in vocabulary.SYNONYMS and rng.random() < SYNONYM_USED:
            word = vocabulary.SYNONYMS[noun]
        else:
            units.append((noun, tuple(adjectives)))
        if rng.random() < CAPTION_ONLY_ADJECTIVE_USED:
            extra = DESCRIBING_ADJECTIVES
            adjectives.insert(0, extra[int(rng.integers(len(extra)))])

        if noun in vocabulary.PLURAL_NOUNS or noun in vocabulary.MASS_NOUNS:
            # A bare noun after a preposition is often tagged as a verb ("next to grass"), so it
            # goes without a determiner only behind an adjective ("blue jeans").
            options = ("some", "the", "") if adjectives else ("some", "the")
            determiner = "the" if definite else options[int(rng.integers(len(options)))]
        elif mention.count > 1:
            word = plural(word)
            determiner = "the" if definite else NUMBERS[mention.count]
        else:
            following = adjectives[0] if adjectives else word
            determiner = "the" if definite else indefinite_article(following)
        return " ".join(part for part in (determiner, *adjectives, word) if part)

    def _relation(self, rng, subject: Mention | None) -> str:
        """Return a verb phrase or preposition linking the subject to the next object."""
        group = self.noun_groups[subject.noun] if subject is not None else None
        options = {"people": PEOPLE_VERBS, "animals": ANIMAL_VERBS}.get(group, THING_RELATIONS)
        return options[int(rng.integers(len(options)))]

    def _standalone(self, subject: Mention) -> str:
        """Return a verb for a subject alone ("standing"), or "shown" for things."""
        if self.noun_groups[subject.noun] in ("people", "animals"):
            return STANDALONE_VERBS[subject.noun % len(STANDALONE_VERBS)]
        return "shown"

    def _opener(self, rng) -> str:
        return OPENERS[int(rng.integers(len(OPENERS)))]

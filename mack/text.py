"""Text side of MACK matching: split a caption into units, each a knowledge noun with its adjectives.

A unit is one noun occurrence that the knowledge contains, with the knowledge attributes that
describe it (eq. 4 averages the noun's prototype with its adjectives' prototypes). The parser
lower-cases and tokenises the text, tags it with NLTK's averaged perceptron tagger and attaches
adjectives to nouns with a few phrase rules, listed here because they decide what a unit is:

- Lookup order: the surface form first, then its noun lemma (lemminflect), then the optional
  synonyms. So "glasses", "jeans" and "shorts" stay themselves when the knowledge has them, and
  "dogs" becomes "dog". Multi-word names ("tennis racket", "hot dogs" -> "hot dog") are matched
  first, longest first, on the surface form or with the last word lemmatised.
- Attributive adjectives (JJ, JJR, JJS) before a noun in its noun phrase attach to the phrase's
  head noun. A knowledge attribute tagged as a noun or participle ("brick", "white", "parked")
  also counts as an adjective when it directly precedes a noun inside a noun phrase.
- Predicative adjectives after be / look / seem / appear / become attach to the subject: the last
  head noun of the sentence that is not governed by a preposition or a verb ("the car on the
  street is red" -> car), every head of a coordinated subject ("the tub and toilet are black"),
  or the previous head noun after "that" / "which" / "who". Negated ones ("is not red") count
  as dropped.
- A noun modifying a following noun ("train station") is a unit of its own when it is a knowledge
  object, without adjectives. Adjectives of the phrase go to its head noun. So, as in MACK,
  every knowledge noun of the text is a unit.
- A multi-word knowledge object made of adjectives and a noun ("young man", "little girl") is read
  as adjective + noun when each leading word is tagged as an adjective here, is a knowledge
  attribute and is not a knowledge object. Lexicalised names whose first word is also an object
  ("stop sign") or not an attribute ("hot dog") stay whole. `split_adjective_names=False` keeps
  every multi-word name whole.
- "front" in "in front of", "top" in "on top of" and quantity nouns before "of" ("a couple of",
  "a group of", "a pair of") are neither units nor unknown words.
- Adjectives after their noun ("a refrigerator full of food") are counted as dropped.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nltk
import numpy as np
from lemminflect import getLemma
from nltk.tag.perceptron import PerceptronTagger
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

TAGGER_RESOURCE = "averaged_perceptron_tagger_eng"
DOWNLOAD_COMMAND = f"python -m nltk.downloader {TAGGER_RESOURCE}"

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS"})
ADVERB_TAGS = frozenset({"RB", "RBR", "RBS"})
DETERMINER_TAGS = frozenset({"DT", "PDT", "PRP$", "CD", "WP$"})
# Tags after which a participle or verb-tagged word sits inside a noun phrase ("a parked car").
NOUN_PHRASE_TAGS = ADJECTIVE_TAGS | DETERMINER_TAGS | {"POS"}
SENTENCE_END = frozenset({".", "!", "?", ";"})
COPULAS = frozenset(
    {
        "be", "is", "are", "was", "were", "been", "being", "am", "'s", "'re", "'m",
        "look", "looks", "looked", "looking",
        "seem", "seems", "seemed", "seeming",
        "appear", "appears", "appeared", "appearing",
        "become", "becomes", "became", "becoming",
    }
)  # fmt: skip
NEGATIONS = frozenset({"not", "n't", "never"})
RELATIVE_PRONOUNS = frozenset({"that", "which", "who"})
# Nouns that only count or place something when followed by "of": "a couple of dogs".
QUANTITY_NOUNS = frozenset(
    {
        "lot", "lots", "couple", "group", "groups", "pair", "pairs", "number", "variety",
        "kind", "kinds", "sort", "sorts", "type", "types", "plenty", "handful", "assortment",
        "array", "selection", "bunch", "bunches",
    }
)  # fmt: skip
PLACE_PHRASES = (("in", "front", "of"), ("on", "top", "of"))
INDEFINITE_PRONOUNS = frozenset(
    {"something", "someone", "somebody", "anything", "anyone", "nothing", "everything", "everyone"}
)
# Nouns that name one thing in the plural: singular_noun() keeps them as they are.
PLURAL_CONCEPTS = frozenset(
    {
        "glasses", "eyeglasses", "sunglasses", "jeans", "shorts", "pants", "trousers", "tights",
        "leggings", "pajamas", "overalls", "scissors", "goggles", "binoculars", "tongs",
        "pliers", "clothes", "blinds", "headphones", "earphones", "suspenders",
    }
)  # fmt: skip

# Splits clitics ("man's" -> "man", "'s"; "isn't" -> "is", "n't") and keeps hyphenated words.
TOKEN_PATTERN = re.compile(r"[^\W_]+(?=n't)|n't|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:-[^\W_]+)*|\S")

_TAGGERS: dict[tuple[str, ...], FastPerceptronTagger] = {}


class NLTKDataMissingError(LookupError):
    """Error for NLTK's averaged perceptron tagger data missing from every `nltk.data.path`."""


@dataclass(frozen=True)
class Unit:
    """One noun occurrence of a text with the knowledge attributes attached to it."""

    noun: str  # knowledge object, possibly multi-word ("hot dog")
    adjectives: tuple[str, ...] = ()


@dataclass
class ParsedText:
    """A text split into units, with the words the knowledge does not contain."""

    text: str
    units: list[Unit] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    dropped_adjectives: int = 0


def load_tagger() -> FastPerceptronTagger:
    """Load the averaged perceptron tagger once per `nltk.data.path`.

    Raises NLTKDataMissingError with the download command when the data is missing.
    """
    key = tuple(nltk.data.path)
    if key not in _TAGGERS:
        try:
            tagger = PerceptronTagger(lang="eng")
        except LookupError as error:
            searched = ", ".join(nltk.data.path) or "(empty nltk.data.path)"
            raise NLTKDataMissingError(
                f"NLTK tagger data '{TAGGER_RESOURCE}' not found (searched: {searched}; "
                f"NLTK_DATA={os.environ.get('NLTK_DATA', '<unset>')}). Install it with "
                f"`{DOWNLOAD_COMMAND}`, or set NLTK_DATA to a folder that contains "
                f"taggers/{TAGGER_RESOURCE}/."
            ) from error
        _TAGGERS[key] = FastPerceptronTagger(tagger)
    return _TAGGERS[key]


class FastPerceptronTagger:
    """NLTK's averaged perceptron tagging with the weights in one numpy matrix.

    Gives the same tags as `PerceptronTagger.tag`, which `nltk.pos_tag` uses: same features,
    same left-to-right greedy decoding, scores summed in the same feature order and ties broken
    towards the larger label. It took a fifth to a third of NLTK's CPU time on 3,000 COCO captions,
    because each token's score is one row sum instead of dict loops.
    weights: (n_features + 1, n_classes) float64, the last row zeros for unseen features.
    NOTE: the feature strings copy NLTK 3.10.4, and tests compare the tags with NLTK's own.
    """

    def __init__(self, tagger: PerceptronTagger) -> None:
        self.tagdict = tagger.tagdict
        self.normalize = tagger.normalize
        self.classes = sorted(tagger.classes)
        class_index = {label: column for column, label in enumerate(self.classes)}

        model_weights = tagger.model.weights
        self.feature_index = {feature: row for row, feature in enumerate(model_weights)}
        self.weights = np.zeros((len(model_weights) + 1, len(self.classes)), dtype=np.float64)
        for row, label_weights in enumerate(model_weights.values()):
            for label, weight in label_weights.items():
                self.weights[row, class_index[label]] = weight
        self.missing_row = len(model_weights)  # all zeros, for features the model never saw

    def tag(self, tokens: Sequence[str]) -> list[str]:
        """Return one Penn Treebank tag per token."""
        context = ["-START-", "-START2-", *(self.normalize(w) for w in tokens), "-END-", "-END2-"]
        prev, prev2 = "-START-", "-START2-"
        tags = []
        for i, word in enumerate(tokens):
            tag = self.tagdict.get(word)
            if not tag:
                tag = self._predict(self._feature_rows(i + 2, word, context, prev, prev2))
            tags.append(tag)
            prev2, prev = prev, tag
        return tags

    def _feature_rows(self, i: int, word: str, context: list[str], prev: str, prev2: str):
        # Same feature strings, in the same order, as PerceptronTagger._get_features (NLTK 3.10.4).
        features = (
            "bias",
            f"i suffix {word[-3:]}",
            f"i pref1 {word[0] if word else ''}",
            f"i-1 tag {prev}",
            f"i-2 tag {prev2}",
            f"i tag+i-2 tag {prev} {prev2}",
            f"i word {context[i]}",
            f"i-1 tag+i word {prev} {context[i]}",
            f"i-1 word {context[i - 1]}",
            f"i-1 suffix {context[i - 1][-3:]}",
            f"i-2 word {context[i - 2]}",
            f"i+1 word {context[i + 1]}",
            f"i+1 suffix {context[i + 1][-3:]}",
            f"i+2 word {context[i + 2]}",
        )
        get = self.feature_index.get
        return [get(feature, self.missing_row) for feature in features]

    def _predict(self, rows: list[int]) -> str:
        scores = self.weights.take(rows, axis=0).sum(axis=0)
        last_best = int(scores[::-1].argmax())  # ties go to the larger label, as in NLTK
        return self.classes[len(self.classes) - 1 - last_best]


def tokenize(text: str) -> list[str]:
    """Lower-case `text` and split it into word, clitic and punctuation tokens."""
    return TOKEN_PATTERN.findall(text.lower().replace("\u2019", "'"))


@functools.lru_cache(maxsize=65536)
def noun_lemmas(word: str) -> tuple[str, ...]:
    """Return the noun lemmas of `word` from lemminflect ("leaves" -> ("leave", "leaf"))."""
    return getLemma(word, upos="NOUN") or (word,)


@functools.lru_cache(maxsize=8192)
def _adjective_lemmas(word: str) -> tuple[str, ...]:
    return getLemma(word, upos="ADJ") or (word,)


def singular_noun(name: str) -> str:
    """Return the singular of a noun name, lemmatising its last word ("hot dogs" -> "hot dog").

    Names in PLURAL_CONCEPTS ("glasses", "jeans", "shorts") are returned unchanged.
    """
    words = name.lower().split()
    if not words or words[-1] in PLURAL_CONCEPTS:
        return " ".join(words)
    words[-1] = noun_lemmas(words[-1])[0]
    return " ".join(words)


def load_vocab_file(path: str | os.PathLike) -> list[list[str]]:
    """Read a vocabulary file with one concept per line and comma-separated synonyms.

    Returns one list of lower-case names per non-empty line, the concept's name first
    (the bottom-up-attention `objects_vocab.txt` / `attributes_vocab.txt` layout).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")

    groups = []
    for line in path.read_text(encoding="utf-8").splitlines():
        names = [name.strip().lower() for name in line.split(",")]
        names = [name for name in names if name]
        if names:
            groups.append(names)
    return groups


# Adjective-tagged words that count or compare and are never content words ("next to", "other").
FUNCTION_ADJECTIVES = frozenset(
    {"next", "other", "many", "several", "few", "such", "same", "much", "more", "most", "own"}
)
PREPOSITION_TAGS = frozenset({"IN", "TO"})
UNKNOWN_HEAD = -1  # builder index of a head noun that the knowledge does not contain


@dataclass(frozen=True)
class _Item:
    """One token, or one multi-word knowledge name, with its tag and knowledge matches."""

    word: str  # surface form, words joined by one space
    tag: str  # tag of the last token
    obj: str | None  # knowledge object it matches, if any
    attr: str | None  # knowledge attribute it matches, if any
    lemma: str  # singular form reported in ParsedText.unknown
    multi: bool = False  # a multi-word knowledge name
    nominal: bool = field(init=False)  # tagged as a noun, or a multi-word knowledge object
    content: bool = field(init=False)  # reported in ParsedText.unknown when not in the knowledge

    def __post_init__(self) -> None:
        nominal = self.tag in NOUN_TAGS or (self.multi and self.obj is not None)
        letters = sum(c.isalpha() for c in self.word)
        content = letters > 1 and self.word not in INDEFINITE_PRONOUNS
        object.__setattr__(self, "nominal", nominal)
        object.__setattr__(self, "content", content)


class _UnitBuilder:
    """State of the left-to-right scan: open noun phrase, pending adjectives, subject."""

    def __init__(self) -> None:
        self.units: list[tuple[str, list[str]]] = []
        self.unknown: list[str] = []
        self.dropped = 0
        self.pending: list[str] = []
        self.in_phrase = False
        self.governor = "START"  # tag of the token before the open noun phrase
        self.last_governor: str | None = None  # governor of the last closed noun phrase
        self.coordinated = False  # the open phrase follows "and" or a comma after another phrase
        self.last_head: int | None = None  # index in units, UNKNOWN_HEAD, or None
        self.subjects: list[int] = []  # heads of the sentence's subject ("the cup and plate")

    def open_phrase(self, prev_tag: str) -> None:
        """Open a noun phrase; after "and" or a comma it takes the previous phrase's governor."""
        if self.in_phrase:
            return
        self.in_phrase = True
        self.coordinated = prev_tag in ("CC", ",") and self.last_governor is not None
        self.governor = self.last_governor if self.coordinated else prev_tag

    def adjective(self, concept: str, prev_tag: str) -> None:
        self.open_phrase(prev_tag)
        self.pending.append(concept)

    def modifier(self, concept: str, prev_tag: str) -> None:
        self.open_phrase(prev_tag)
        self.units.append((concept, []))

    def unknown_word(self, word: str, prev_tag: str) -> None:
        self.open_phrase(prev_tag)
        self.unknown.append(word)

    def head(self, concept: str | None, word: str, prev_tag: str, continues: bool) -> None:
        """Close the noun phrase on its head noun; `continues` keeps it open for a possessive."""
        self.open_phrase(prev_tag)
        if concept is None:
            self.unknown.append(word)
            self.dropped += len(self.pending)
            index = UNKNOWN_HEAD
        else:
            self.units.append((concept, self.pending))
            index = len(self.units) - 1
        self.pending = []

        self.last_head = index
        if self.governor not in PREPOSITION_TAGS and not self.governor.startswith("VB"):
            self.subjects = [*self.subjects, index] if self.coordinated else [index]
        self.last_governor = self.governor
        self.in_phrase = continues

    def break_phrase(self) -> None:
        self.dropped += len(self.pending)
        self.pending = []
        self.in_phrase = False

    def end_sentence(self) -> None:
        self.break_phrase()
        self.last_head = None
        self.last_governor = None
        self.subjects = []

    def attach(self, targets: Sequence[int | None], concept: str) -> None:
        """Attach a predicative adjective to each known target; count it dropped if none is."""
        known = [target for target in targets if target is not None and target != UNKNOWN_HEAD]
        for target in known:
            self.units[target][1].append(concept)
        if not known:
            self.dropped += 1

    def result(self, text: str) -> ParsedText:
        self.break_phrase()
        units = [Unit(noun, tuple(adjectives)) for noun, adjectives in self.units]
        return ParsedText(text, units, self.unknown, self.dropped)


def _normalise_names(names: Iterable[str], argument: str) -> set[str]:
    if isinstance(names, str):
        raise TypeError(f"{argument} must be an iterable of words, got the string {names!r}")
    normalised = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{argument} must contain strings, got {type(name).__name__}: {name!r}")
        normalised.add(" ".join(name.lower().split()))
    return normalised


class _Lexicon:
    """Knowledge objects, attributes and synonyms, with the lookup order of the module docstring."""

    def __init__(self, objects, attributes, synonyms) -> None:
        self.objects = _normalise_names(objects, "objects")
        self.attributes = _normalise_names(attributes, "attributes")
        self.synonyms = self._check_synonyms(synonyms or {})

        # Names are matched as token sequences: "catcher's mitt" is "catcher 's mitt" in a text.
        self.token_forms: dict[str, str] = {}  # tokenised form -> name, where the two differ
        lengths: dict[str, set[int]] = {}  # first token -> lengths of multi-token names
        for name in self.objects | self.attributes | set(self.synonyms):
            words = tokenize(name)
            if " ".join(words) != name:
                self.token_forms[" ".join(words)] = name
            if len(words) > 1:
                lengths.setdefault(words[0], set()).add(len(words))
        self.multi_lengths = {word: sorted(n, reverse=True) for word, n in lengths.items()}
        self._items: dict[tuple[str, str], _Item] = {}

    def _check_synonyms(self, synonyms: Mapping[str, str]) -> dict[str, str]:
        checked = {}
        for key, value in synonyms.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"synonyms must map str to str, got {key!r} -> {value!r}")
            target = " ".join(value.lower().split())
            if target not in self.objects and target not in self.attributes:
                raise ValueError(
                    f"synonym {key!r} -> {value!r}: {value!r} is neither a knowledge object nor "
                    "a knowledge attribute; map each synonym to a word of the knowledge"
                )
            checked[" ".join(key.lower().split())] = target
        return checked

    def resolve(self, forms: Sequence[str], lemmas: Sequence[str], names: set[str]) -> str | None:
        """Return the knowledge word for the first of: a surface form, a lemma, a synonym."""
        for candidate in (*forms, *lemmas):
            candidate = self.token_forms.get(candidate, candidate)
            if candidate in names:
                return candidate
        for candidate in (*forms, *lemmas):
            target = self.synonyms.get(self.token_forms.get(candidate, candidate))
            if target in names:
                return target
        return None

    def match_multi(self, tokens: Sequence[str], start: int) -> tuple[int, str | None, str | None]:
        """Return (length, object, attribute) of the longest multi-word name at `start`.

        The last word matches by surface form or by noun lemma ("hot dogs" -> "hot dog").
        Returns (0, None, None) when no multi-word name starts there.
        """
        for length in self.multi_lengths.get(tokens[start], ()):
            end = start + length
            if end > len(tokens):
                continue
            head = " ".join(tokens[start : end - 1])
            forms = [f"{head} {tokens[end - 1]}"]
            lemmas = [f"{head} {lemma}" for lemma in noun_lemmas(tokens[end - 1])]
            obj = self.resolve(forms, lemmas, self.objects)
            attr = self.resolve(forms, lemmas, self.attributes)
            if obj is not None or attr is not None:
                return length, obj, attr
        return 0, None, None

    def single_item(self, token: str, tag: str) -> _Item:
        """Return the item of one token, cached because captions repeat few distinct words."""
        key = (token, tag)
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = self._lookup_single(token, tag)
        return item

    def _lookup_single(self, token: str, tag: str) -> _Item:
        forms = [token]
        if "-" in token:
            forms += [token.replace("-", " "), token.replace("-", "")]
        # Only noun-tagged tokens get noun lemmas, because "parked" must not become "park".
        lemmas = noun_lemmas(token) if tag in NOUN_TAGS else ()
        obj = self.resolve(forms, lemmas, self.objects)
        if tag in ("JJR", "JJS"):
            lemmas = _adjective_lemmas(token)  # "taller" -> "tall"
        attr = self.resolve(forms, lemmas, self.attributes)
        lemma = singular_noun(token) if tag in NOUN_TAGS else token
        return _Item(token, tag, obj, attr, lemma)


class TextParser:
    """Parse texts into units (knowledge noun + its knowledge adjectives) for eq. 4.

    objects: words allowed as unit nouns; attributes: words allowed as adjectives. A word in
    both sets takes the role that its tag and position give it. synonyms: optional
    word -> knowledge word mapping, used only when the surface form and lemma are not found.
    split_adjective_names: read a multi-word object such as "young man" as adjective + noun
    when its leading words are tagged as adjectives, are attributes and are not objects.
    """

    def __init__(
        self,
        objects: Iterable[str],
        attributes: Iterable[str] = (),
        synonyms: Mapping[str, str] | None = None,
        *,
        split_adjective_names: bool = True,
    ) -> None:
        self.lexicon = _Lexicon(objects, attributes, synonyms)
        self.split_adjective_names = split_adjective_names
        if not self.lexicon.objects:
            logger.warning("TextParser has no knowledge objects, so every text gets zero units")
        self._tagger = load_tagger()

    @classmethod
    def from_knowledge(cls, knowledge, synonyms: Mapping[str, str] | None = None, **options):
        """Build a parser from a `mack.knowledge.Knowledge` (its objects and attributes)."""
        return cls(knowledge.objects(), knowledge.attributes(), synonyms, **options)

    def parse(self, text: str) -> ParsedText:
        """Split one text into units; an empty text gives a ParsedText with no units."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r:.200}")
        tokens = tokenize(text)
        if not tokens:
            return ParsedText(text)

        tags = self._tagger.tag(tokens)
        items = self._items(tokens, tags)

        builder = _UnitBuilder()
        index = 0
        while index < len(items):
            index = self._step(items, index, builder)
        return builder.result(text)

    def parse_many(self, texts: Sequence[str], progress: bool = True) -> list[ParsedText]:
        """Parse each text in order; raises TypeError naming the index of a non-string text."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, got one string; use parse()")
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"texts[{position}] must be a str, got {type(text).__name__}: {text!r:.200}"
                )

        parsed = [
            self.parse(text) for text in tqdm(texts, desc="parse texts", disable=not progress)
        ]
        n_empty = sum(1 for result in parsed if not result.units)
        logger.info("parsed %d texts, %d without any knowledge unit", len(parsed), n_empty)
        return parsed

    def _items(self, tokens: list[str], tags: list[str]) -> list[_Item]:
        """Merge multi-word knowledge names into single items and look up the other tokens."""
        items = []
        start = 0
        while start < len(tokens):
            length, obj, attr = self.lexicon.match_multi(tokens, start)
            if length and not self._reads_as_adjectives(tokens, tags, start, length, attr):
                end = start + length
                word = " ".join(tokens[start:end])
                lemma = " ".join([*tokens[start : end - 1], singular_noun(tokens[end - 1])])
                items.append(_Item(word, tags[end - 1], obj, attr, lemma, multi=True))
                start = end
            else:
                items.append(self.lexicon.single_item(tokens[start], tags[start]))
                start += 1
        return items

    def _reads_as_adjectives(self, tokens, tags, start: int, length: int, attr) -> bool:
        """True when a multi-word object like "young man" should be read as adjective + noun.

        NOTE: a lexicalised name passes too when its first word is an attribute and no object
        in the knowledge ("hot dog" with "hot" an attribute only); use split_adjective_names=False.
        """
        if not self.split_adjective_names or attr is not None:
            return False
        lexicon = self.lexicon
        for position in range(start, start + length - 1):
            word = tokens[position]
            if tags[position] not in ADJECTIVE_TAGS:
                return False
            if word not in lexicon.attributes or word in lexicon.objects:
                return False
        last = tokens[start + length - 1]
        return lexicon.resolve([last], noun_lemmas(last), lexicon.objects) is not None

    def _step(self, items: list[_Item], index: int, builder: _UnitBuilder) -> int:
        """Consume the item at `index` (and a predicative complement); return the next index."""
        item = items[index]
        prev_tag = items[index - 1].tag if index else "START"
        next_item = items[index + 1] if index + 1 < len(items) else None
        next_nominal = next_item is not None and next_item.nominal

        if item.word in SENTENCE_END:
            builder.end_sentence()
        elif item.tag.startswith("VB") and item.word in COPULAS:
            end = self._predicative(items, index, builder)
            if end is not None:
                return end
            builder.break_phrase()
        elif _is_function_noun(items, index):
            builder.break_phrase()
        elif item.nominal:
            self._nominal(item, prev_tag, next_item, next_nominal, builder)
        elif item.tag in ADJECTIVE_TAGS:
            self._adjective(item, prev_tag, next_item, next_nominal, builder)
        elif item.tag.startswith("VB") and _inside_phrase(prev_tag, builder):
            self._participle(item, prev_tag, next_item, next_nominal, builder)
        elif item.tag in DETERMINER_TAGS:
            if builder.pending and item.tag in ("DT", "PRP$"):
                builder.break_phrase()  # "one wearing a hat": a determiner starts a new phrase
            builder.open_phrase(prev_tag)
        elif item.tag in ("CC", ","):
            if not (builder.pending and _continues_list(items, index + 1)):
                builder.break_phrase()
        elif item.tag in ADVERB_TAGS or item.tag == "POS":
            pass  # "a very large dog", "the man 's hat": the noun phrase stays open
        else:
            builder.break_phrase()
        return index + 1

    def _nominal(self, item, prev_tag, next_item, next_nominal, builder) -> None:
        # NOTE: a verb tagged as a plural noun ("a black dog runs": runs/NNS) makes the real head
        # look like a modifier, so "dog" becomes a bare unit and "black" is dropped.
        if next_nominal:
            if item.attr is not None:
                builder.adjective(item.attr, prev_tag)
            elif item.obj is not None:
                builder.modifier(item.obj, prev_tag)
            elif item.content:
                builder.unknown_word(item.lemma, prev_tag)
            return

        possessive = next_item is not None and next_item.tag == "POS"
        if item.obj is not None:
            builder.head(item.obj, item.word, prev_tag, possessive)
        elif item.attr is not None:
            builder.adjective(item.attr, prev_tag)  # "a man in white": dropped with no noun after
        elif item.content:
            builder.head(None, item.lemma, prev_tag, possessive)
        else:
            builder.break_phrase()

    def _adjective(self, item, prev_tag, next_item, next_nominal, builder) -> None:
        if item.attr is not None:
            builder.adjective(item.attr, prev_tag)
        elif item.obj is not None:
            self._nominal(item, prev_tag, next_item, next_nominal, builder)
        elif item.word in FUNCTION_ADJECTIVES or not item.content:
            builder.open_phrase(prev_tag)
        else:
            builder.unknown_word(item.word, prev_tag)

    def _participle(self, item, prev_tag, next_item, next_nominal, builder) -> None:
        """Handle a verb-tagged word after a determiner or adjective: "a parked car", "a building"."""
        if item.attr is not None and next_nominal:
            builder.adjective(item.attr, prev_tag)
        elif item.obj is not None:
            self._nominal(item, prev_tag, next_item, next_nominal, builder)
        elif next_nominal:
            builder.open_phrase(prev_tag)  # "a sliding door": an unknown participle modifier
        else:
            builder.break_phrase()

    def _predicative(self, items: list[_Item], index: int, builder: _UnitBuilder) -> int | None:
        """Attach "is red and shiny" after a copula at `index` to the subject.

        Returns the index after the complement, or None when no adjective follows the copula.
        """
        end = index + 1
        complement: list[_Item] = []
        while end < len(items):
            item = items[end]
            if item.word in NEGATIONS:
                return None
            if item.tag in ADJECTIVE_TAGS or (item.tag in NOUN_TAGS and item.attr is not None):
                complement.append(item)
            elif not (item.tag in ADVERB_TAGS or (item.tag in ("CC", ",") and complement)):
                break
            end += 1
        if not complement or (end < len(items) and items[end].nominal):
            return None  # "is a red car", "is black and white dog": a noun phrase follows
        while items[end - 1] is not complement[-1]:
            end -= 1  # leave a trailing "and" to the next clause: "is red and the sky is blue"

        builder.break_phrase()
        builder.last_governor = None  # a phrase after the complement starts a new clause
        relative = index > 0 and items[index - 1].word in RELATIVE_PRONOUNS
        if relative or not builder.subjects:
            targets = [builder.last_head]
        else:
            targets = builder.subjects
        for item in complement:
            if item.attr is not None:
                builder.attach(targets, item.attr)
            elif item.obj is not None:
                builder.units.append((item.obj, []))
            elif item.content and item.word not in FUNCTION_ADJECTIVES:
                builder.unknown.append(item.word)
        return end


def _inside_phrase(prev_tag: str, builder: _UnitBuilder) -> bool:
    return prev_tag in NOUN_PHRASE_TAGS or (builder.in_phrase and bool(builder.pending))


def _continues_list(items: list[_Item], start: int) -> bool:
    """True when an adjective follows `start` after any commas, conjunctions and adverbs."""
    for item in items[start:]:
        if item.tag in ("CC", ",") or item.tag in ADVERB_TAGS:
            continue
        return item.tag in ADJECTIVE_TAGS or item.attr is not None
    return False


def _is_function_noun(items: list[_Item], index: int) -> bool:
    """True for "front" in "in front of", "top" in "on top of", "couple" in "a couple of"."""
    word = items[index].word
    if index + 1 >= len(items) or items[index + 1].word != "of":
        return False
    if word in QUANTITY_NOUNS:
        return True
    previous = items[index - 1].word if index else ""
    return (previous, word, "of") in PLACE_PHRASES

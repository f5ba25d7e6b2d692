"""Tests of mack.text: tokenising, tagging and noun + adjective units on real captions."""

from __future__ import annotations

import types

import nltk
import pytest
from nltk.tag.perceptron import PerceptronTagger

import mack.config
from mack.text import (
    DOWNLOAD_COMMAND,
    NLTKDataMissingError,
    ParsedText,
    TextParser,
    Unit,
    load_tagger,
    load_vocab_file,
    singular_noun,
    tokenize,
)

from helpers import needs_real_data


def units(parsed: ParsedText) -> list[tuple[str, ...]]:
    """Units as (noun, *adjectives) tuples, which read well in assertion messages."""
    return [(unit.noun, *unit.adjectives) for unit in parsed.units]


def read_lines(name: str) -> list[str]:
    return (mack.config.data_root() / "captions" / name).read_text(encoding="utf-8").split("\n")


def vocab_knowledge() -> tuple[set[str], set[str], dict[str, str]]:
    """Build knowledge objects, attributes and synonyms from the bottom-up VG vocabularies.

    The first name of a line is the concept and the other names are its synonyms. An object
    name is singularised when its singular is also a vocabulary name ("dogs" joins "dog",
    "hot dogs" joins "hot dog"), as a lemmatised knowledge stores it.
    """
    vocab = mack.config.data_root() / "vg" / "vocab"
    object_lines = load_vocab_file(vocab / "objects_vocab.txt")
    attribute_lines = load_vocab_file(vocab / "attributes_vocab.txt")
    object_names = {name for names in object_lines for name in names}

    def concept(name: str) -> str:
        singular = singular_noun(name)
        return singular if singular in object_names else name

    objects = {concept(names[0]) for names in object_lines}
    attributes = {names[0] for names in attribute_lines}
    synonyms: dict[str, str] = {}
    for names in object_lines:
        for name in map(concept, names[1:]):
            if name not in objects:
                synonyms[name] = concept(names[0])
    for names in attribute_lines:
        for name in names[1:]:
            if name not in attributes:
                synonyms.setdefault(name, names[0])
    return objects, attributes, synonyms


@pytest.fixture(scope="module")
def nltk_data_path():
    """Put the real data folder's nltk_data first on nltk.data.path, with or without NLTK_DATA."""
    with pytest.MonkeyPatch.context() as patch:
        folder = str(mack.config.data_root() / "nltk_data")
        patch.setattr(nltk.data, "path", [folder, *nltk.data.path])
        yield folder


@pytest.fixture(scope="module")
def knowledge(nltk_data_path):
    return vocab_knowledge()


@pytest.fixture(scope="module")
def parser(knowledge):
    objects, attributes, synonyms = knowledge
    return TextParser(objects, attributes, synonyms)


# --- helpers that need no data ---------------------------------------------------------------


def test_tokenize_splits_clitics_keeps_hyphens():
    assert tokenize("The man's T-shirt isn't red.") == [
        "the", "man", "'s", "t-shirt", "is", "n't", "red", ".",
    ]  # fmt: skip
    assert tokenize("A dog\u2019s ball , 2 cats") == ["a", "dog", "'s", "ball", ",", "2", "cats"]
    assert tokenize("  \n") == []


def test_singular_noun_keeps_plural_concepts():
    assert singular_noun("dogs") == "dog"
    assert singular_noun("Hot Dogs") == "hot dog"
    assert singular_noun("men") == "man"
    assert singular_noun("glasses") == "glasses"
    assert singular_noun("jeans") == "jeans"
    assert singular_noun("shorts") == "shorts"


def test_load_vocab_file_splits_synonyms(tmp_path):
    path = tmp_path / "objects_vocab.txt"
    path.write_text("dog\nStop Sign,stopsign\n\ntshirt, t-shirt ,t shirt", encoding="utf-8")

    groups = load_vocab_file(path)

    assert groups == [["dog"], ["stop sign", "stopsign"], ["tshirt", "t-shirt", "t shirt"]]


def test_load_vocab_file_missing_raises(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_vocab_file(missing)


# --- tagger ----------------------------------------------------------------------------------


def test_missing_tagger_data_raises_with_command(tmp_path, monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])

    with pytest.raises(NLTKDataMissingError) as caught:
        TextParser(["dog"])

    message = str(caught.value)
    assert DOWNLOAD_COMMAND in message
    assert "python -m nltk.downloader averaged_perceptron_tagger_eng" in message
    assert "NLTK_DATA" in message
    assert str(tmp_path) in message
    assert isinstance(caught.value, LookupError)


@needs_real_data
def test_load_tagger_is_cached(nltk_data_path):
    assert load_tagger() is load_tagger()


@needs_real_data
def test_fast_tagger_equals_nltk_tagger(nltk_data_path):
    captions = read_lines("coco_testall_caps.txt")[::250] + read_lines("f30k_test_caps.txt")[::50]
    reference = PerceptronTagger(lang="eng")  # the tagger nltk.pos_tag builds for English
    fast = load_tagger()

    for caption in captions:
        tokens = tokenize(caption)
        expected = [tag for _, tag in reference.tag(tokens)]
        assert fast.tag(tokens) == expected, caption


# --- units from the VG vocabulary ------------------------------------------------------------


@needs_real_data
def test_vocab_files_read_in_place(knowledge):
    vocab = mack.config.data_root() / "vg" / "vocab"
    assert len(load_vocab_file(vocab / "objects_vocab.txt")) == 1600
    assert len(load_vocab_file(vocab / "attributes_vocab.txt")) == 400

    objects, attributes, synonyms = knowledge
    assert {"dog", "hot dog", "glasses", "jeans", "shorts", "tennis racket"} <= objects
    assert "dogs" not in objects
    assert {"red", "young", "black and white"} <= attributes
    assert synonyms["tv"] == "television"
    assert synonyms["grey"] == "gray"


@needs_real_data
def test_adjectives_attach_to_their_noun(parser):
    parsed = parser.parse("a young man in a red shirt rides a brown horse")

    assert parsed.units == [
        Unit("man", ("young",)),
        Unit("shirt", ("red",)),
        Unit("horse", ("brown",)),
    ]
    assert parsed.unknown == []
    assert parsed.dropped_adjectives == 0


@needs_real_data
def test_plurals_become_singular(parser):
    assert units(parser.parse("two dogs")) == [("dog",)]
    assert units(parser.parse("Three men and two giraffes")) == [("man",), ("giraffe",)]


@needs_real_data
def test_plural_concepts_stay_themselves(parser):
    parsed = parser.parse("a man wearing glasses , jeans and shorts")
    assert units(parsed) == [("man",), ("glasses",), ("jeans",), ("shorts",)]


@needs_real_data
def test_multi_word_names_are_one_unit(parser):
    assert units(parser.parse("a man holding a tennis racket")) == [("man",), ("tennis racket",)]
    assert units(parser.parse("a hot dog with mustard")) == [("hot dog",), ("mustard",)]
    assert units(parser.parse("two hot dogs and a stop sign")) == [("hot dog",), ("stop sign",)]
    assert units(parser.parse("a brown teddy bear")) == [("teddy bear", "brown")]
    assert units(parser.parse("the catcher's mitt")) == [("catcher's mitt",)]
    assert units(parser.parse("a multi colored kite")) == [("kite", "multi colored")]
    assert units(parser.parse("a multi-colored kite")) == [("kite", "multi colored")]


@needs_real_data
def test_multi_word_surface_before_lemma(nltk_data_path):
    parser = TextParser(["hot dog", "hot dogs", "dog"])
    assert units(parser.parse("two hot dogs")) == [("hot dogs",)]
    assert units(parser.parse("a hot dog")) == [("hot dog",)]


@needs_real_data
def test_adjective_names_split_or_kept(knowledge):
    objects, attributes, synonyms = knowledge
    assert "young man" in objects
    assert "little girl" in objects

    split = TextParser(objects, attributes, synonyms)
    whole = TextParser(objects, attributes, synonyms, split_adjective_names=False)

    assert units(split.parse("a little girl")) == [("girl", "little")]
    assert units(whole.parse("a little girl")) == [("little girl",)]
    assert units(whole.parse("a young man")) == [("young man",)]
    # "stop" is also an object and "hot" is no attribute: both names stay whole.
    assert units(split.parse("a stop sign")) == [("stop sign",)]
    assert units(split.parse("a hot dog")) == [("hot dog",)]


@needs_real_data
def test_synonyms_apply_after_lookup(parser, nltk_data_path):
    assert units(parser.parse("a grey cat near a tv")) == [("cat", "gray"), ("television",)]
    assert units(parser.parse("a man in a t-shirt")) == [("man",), ("tshirt",)]

    glasses = TextParser(["glass", "glasses"], synonyms={"glasses": "glass", "cup": "glass"})
    assert units(glasses.parse("glasses and a cup")) == [("glasses",), ("glass",)]


@needs_real_data
def test_predicative_adjectives(parser):
    assert units(parser.parse("the car is red")) == [("car", "red")]
    assert units(parser.parse("the sky is blue and cloudy")) == [("sky", "blue", "cloudy")]
    assert units(parser.parse("a dog that is brown")) == [("dog", "brown")]
    assert units(parser.parse("the man's shirt is red")) == [("man",), ("shirt", "red")]
    assert units(parser.parse("the car on the street is red")) == [("car", "red"), ("street",)]
    assert units(parser.parse("the car is red and the truck is blue")) == [
        ("car", "red"),
        ("truck", "blue"),
    ]


@needs_real_data
def test_negated_or_subjectless_adjective_dropped(parser):
    negated = parser.parse("the car is not red")
    assert units(negated) == [("car",)]
    assert negated.dropped_adjectives == 1

    no_noun = parser.parse("it is red")
    assert no_noun.units == []
    assert no_noun.dropped_adjectives == 1


@needs_real_data
def test_repeated_noun_gives_two_units(parser):
    assert units(parser.parse("a dog and another dog")) == [("dog",), ("dog",)]


@needs_real_data
def test_adjective_of_unknown_noun_dropped(parser):
    parsed = parser.parse("a tall student")

    assert parsed.units == []
    assert parsed.unknown == ["student"]
    assert parsed.dropped_adjectives == 1


@needs_real_data
def test_unknown_content_words_listed(parser):
    parsed = parser.parse("a juggler with a shiny ball near a scarecrow")

    assert units(parsed) == [("ball", "shiny")]
    assert parsed.unknown == ["juggler", "scarecrow"]
    assert parsed.dropped_adjectives == 0


@needs_real_data
def test_noun_modifiers(parser):
    # A modifier that is an attribute joins the head's adjectives.
    assert units(parser.parse("a brick building")) == [("building", "brick")]
    # A modifier that is only an object is a unit of its own. Adjectives go to the head.
    assert units(parser.parse("a busy city street")) == [("city",), ("street", "busy")]
    # An unknown modifier is listed, and the head keeps its adjectives.
    parsed = parser.parse("a large transit bus")
    assert units(parsed) == [("bus", "large")]
    assert parsed.unknown == ["transit"]


@needs_real_data
def test_quantity_and_place_nouns_skipped(parser):
    parsed = parser.parse("a man in front of a group of people on top of a hill")

    assert units(parsed) == [("man",), ("people",), ("hill",)]
    assert parsed.unknown == []


@needs_real_data
def test_empty_text_gives_no_units(parser):
    for text in ("", "   ", " . "):
        parsed = parser.parse(text)
        assert parsed == ParsedText(text, [], [], 0)


@needs_real_data
def test_non_string_raises_type_error(parser):
    with pytest.raises(TypeError, match="int: 5"):
        parser.parse(5)
    with pytest.raises(TypeError, match="NoneType"):
        parser.parse(None)
    with pytest.raises(TypeError, match=r"texts\[1\].*bytes"):
        parser.parse_many(["a dog", b"a cat"], progress=False)
    with pytest.raises(TypeError, match="one string"):
        parser.parse_many("a dog", progress=False)


@needs_real_data
def test_bad_knowledge_arguments_raise(nltk_data_path):
    with pytest.raises(TypeError, match="string 'dog'"):
        TextParser("dog")
    with pytest.raises(TypeError, match="int: 3"):
        TextParser(["dog", 3])
    with pytest.raises(ValueError, match="'puppy' -> 'hound'"):
        TextParser(["dog"], synonyms={"puppy": "hound"})


@needs_real_data
def test_from_knowledge_uses_types(nltk_data_path):
    knowledge = types.SimpleNamespace(
        objects=lambda: {"dog", "frisbee"}, attributes=lambda: {"white", "red"}
    )
    parser = TextParser.from_knowledge(knowledge, synonyms={"puppy": "dog"})

    parsed = parser.parse("The white puppy is chasing a red frisbee.")

    assert units(parsed) == [("dog", "white"), ("frisbee", "red")]


# --- real captions, units written down by hand --------------------------------------------

REAL_CAPTIONS = [
    # (file, 0-based line, caption, expected units)
    ("f30k_test_caps.txt", 4, "A man wears an orange hat and glasses .",
     [("man",), ("hat", "orange"), ("glasses",)]),
    ("f30k_test_caps.txt", 5,
     "A black and white dog is running in a grassy garden surrounded by a white fence .",
     [("dog", "black and white"), ("garden", "grassy"), ("fence", "white")]),
    ("f30k_test_caps.txt", 292, "There is a man with yellow pants and a man with black pants .",
     [("man",), ("pants", "yellow"), ("man",), ("pants", "black")]),
    ("f30k_test_caps.txt", 1558,
     "A crowd of children in white shirts , black shorts and white hats jumping rope .",
     [("crowd",), ("child",), ("shirt", "white"), ("shorts", "black"), ("hat", "white"),
      ("rope",)]),
    ("f30k_test_caps.txt", 3897, "A young girl in a swimsuit stands silently on a small beach .",
     [("girl", "young"), ("swimsuit",), ("beach", "small")]),
    ("coco_testall_caps.txt", 0, "A man with a red helmet on a small moped on a dirt road .",
     [("man",), ("helmet", "red"), ("moped", "small"), ("dirt road",)]),
    ("coco_testall_caps.txt", 4,
     "A man in a red shirt and a red hat is on a motorcycle on a hill side .",
     [("man",), ("shirt", "red"), ("hat", "red"), ("motorcycle",), ("hill side",)]),
    ("coco_testall_caps.txt", 3341, "A picture of a TV on top of another TV .",
     [("picture",), ("television",), ("television",)]),
    ("coco_testall_caps.txt", 3349, "An old yellow plane is flying in the sky .",
     [("plane", "old", "yellow"), ("sky",)]),
    ("coco_testall_caps.txt", 7496, "A street with lots of lights and traffic lights .",
     [("street",), ("light",), ("traffic light",)]),
    ("coco_testall_caps.txt", 5685, "All of the bunches of bananas are yellow and ripe .",
     [("banana", "yellow", "ripe")]),
    ("coco_testall_caps.txt", 1526, "A cat sitting on a chair , that is blue and yellow .",
     [("cat",), ("chair", "blue", "yellow")]),
    ("coco_testall_caps.txt", 21623,
     "The toilet , sink , and bathtub of this bathroom are dirty .",
     [("toilet", "dirty"), ("sink", "dirty"), ("bathtub", "dirty"), ("bathroom",)]),
]  # fmt: skip


@needs_real_data
@pytest.mark.parametrize(("file", "line", "caption", "expected"), REAL_CAPTIONS)
def test_real_caption_units(parser, file, line, caption, expected):
    assert read_lines(file)[line] == caption

    parsed = parser.parse(caption)

    assert units(parsed) == expected
    assert parsed.dropped_adjectives == 0


@needs_real_data
def test_real_caption_unknown_words(parser):
    caption = read_lines("coco_testall_caps.txt")[6879]
    assert caption.startswith("A large white transit bus is parked by the side of the street")

    parsed = parser.parse(caption)

    assert units(parsed) == [("bus", "large", "white"), ("street",), ("building",), ("city",)]
    assert parsed.unknown == ["transit", "side"]


@needs_real_data
def test_parse_many_keeps_knowledge_invariants(parser, knowledge):
    objects, attributes, _ = knowledge
    captions = read_lines("coco_testall_caps.txt")[:500] + read_lines("f30k_test_caps.txt")[:500]

    parsed = parser.parse_many(captions, progress=False)

    assert len(parsed) == len(captions)
    assert [result.text for result in parsed] == captions
    assert parsed[7] == parser.parse(captions[7])
    for result in parsed:
        for unit in result.units:
            assert unit.noun in objects, (result.text, unit)
            assert set(unit.adjectives) <= attributes, (result.text, unit)
        assert not set(result.unknown) & (objects | attributes), result.text
        assert result.dropped_adjectives >= 0
    assert sum(len(result.units) for result in parsed) > 2 * len(captions)

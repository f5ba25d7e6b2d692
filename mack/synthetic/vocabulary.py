"""Word lists of the synthetic world: nouns and adjectives in semantic groups, and caption-only words.

Every noun is a real English noun and every adjective a real adjective, chosen so that the NLTK
averaged perceptron tagger tags them NN*/JJ* in the caption templates (tests/test_synthetic.py
checks this). Multi-word nouns ("tennis racket") are single concepts. Some nouns look plural
("glasses", "jeans", "shorts") and must stay whole words. "glass" and "short" are concepts too, so
a lemmatiser that turns "glasses" into "glass" or "shorts" into "short" picks the wrong concept.
"""

from __future__ import annotations

NOUN_GROUPS: dict[str, tuple[str, ...]] = {
    "people": (
        "man", "woman", "boy", "girl", "child", "baby", "person", "player", "lady", "guy",
        "kid", "crowd", "skier", "surfer", "rider", "chef", "policeman", "cowboy", "soldier", "athlete", "vendor", "waiter", "nurse",
        "farmer", "pilot",
    ),
    "body": (
        "head", "hair", "face", "hand", "arm", "leg", "eye", "nose", "mouth", "ear", "foot",
        "finger", "neck", "beard", "knee", "elbow", "toe", "lip", "tooth", "wrist",
    ),
    "clothing": (
        "shirt", "jacket", "hat", "cap", "dress", "coat", "jeans", "shorts", "pants", "glasses",
        "sunglasses", "helmet", "shoe", "boot", "sock", "scarf", "tie", "sweater", "skirt",
        "uniform", "vest", "glove", "suit", "apron", "sneaker", "blouse", "sandal", "mitten",
        "bandana", "overalls", "goggles",
    ),
    "accessories": (
        "bag", "backpack", "purse", "umbrella", "watch", "necklace", "wallet", "suitcase",
        "bracelet", "earring", "ring", "badge", "briefcase",
    ),
    "animals": (
        "dog", "cat", "horse", "cow", "sheep", "bird", "elephant", "giraffe", "zebra", "bear",
        "duck", "goat", "pig", "lion", "tiger", "monkey", "rabbit", "deer", "chicken", "fish",
        "squirrel", "goose", "camel", "pony", "owl", "turtle", "frog", "seagull", "pigeon",
        "butterfly", "penguin", "kangaroo", "dolphin", "lizard", "snake", "parrot", "swan", "donkey",
    ),
    "vehicles": (
        "car", "bus", "truck", "train", "bicycle", "motorcycle", "boat", "airplane", "van",
        "taxi", "tractor", "scooter", "ship", "helicopter", "wagon", "trailer", "cart", "jeep",
        "canoe", "kayak", "sailboat", "ambulance", "limousine", "minivan", "trolley", "yacht",
        "barge",
    ),
    "street": (
        "wheel", "tire", "headlight", "windshield", "license plate", "fire hydrant", "stop sign",
        "traffic light", "parking meter", "pole", "sign", "mailbox", "bench", "cone",
        "billboard", "crosswalk", "manhole", "curb",
    ),
    "furniture": (
        "chair", "table", "couch", "bed", "desk", "shelf", "cabinet", "drawer", "stool",
        "dresser", "bookshelf", "armchair", "crib", "coffee table", "nightstand", "counter",
        "recliner", "hammock",
    ),
    "household": (
        "lamp", "pillow", "blanket", "curtain", "rug", "carpet", "vase", "clock", "mirror",
        "painting", "frame", "candle", "book", "towel", "basket", "box", "bottle", "toilet",
        "sink", "bathtub", "faucet", "potted plant", "doormat", "hanger", "thermostat",
        "chandelier",
    ),
    "kitchen": (
        "plate", "bowl", "cup", "mug", "glass", "fork", "knife", "spoon", "pan", "pot",
        "kettle", "jar", "tray", "napkin", "oven", "refrigerator", "microwave", "toaster",
        "stove", "cutting board", "wine glass", "teapot", "ladle", "whisk", "colander",
        "dishwasher", "spatula",
    ),
    "food": (
        "pizza", "sandwich", "cake", "donut", "apple", "banana", "orange", "broccoli", "carrot",
        "hot dog", "bread", "cheese", "egg", "tomato", "potato", "salad", "soup", "rice",
        "meat", "steak", "cookie", "pie", "sausage", "lettuce", "onion", "pepper", "lemon",
        "strawberry", "grape", "cucumber", "mushroom", "ice cream", "coffee", "juice", "wine", "pancake", "waffle", "muffin", "bagel",
        "pretzel", "burrito", "avocado", "pineapple", "peach", "cherry",
    ),
    "electronics": (
        "laptop", "computer", "keyboard", "mouse", "monitor", "screen", "television", "phone",
        "cell phone", "camera", "speaker", "cable", "tablet", "printer", "headphones",
        "microphone", "router", "charger", "projector",
    ),
    "sports": (
        "ball", "frisbee", "kite", "skateboard", "surfboard", "snowboard", "ski",
        "tennis racket", "baseball bat", "baseball glove", "paddle", "sail",
        "soccer ball", "golf club", "tennis ball", "racket", "jersey", "dumbbell", "hurdle", "trophy",
    ),
    "nature": (
        "tree", "grass", "sky", "cloud", "water", "sand", "snow", "mountain", "hill", "rock",
        "field", "beach", "ocean", "wave", "river", "lake", "bush", "flower", "leaf", "branch",
        "dirt", "mud", "sun", "shadow", "ground", "boulder", "puddle", "cliff",
    ),
    "buildings": (
        "building", "house", "wall", "fence", "roof", "bridge", "tower", "street", "road",
        "sidewalk", "floor", "ceiling", "window", "door", "staircase", "railing", "column",
        "balcony", "church", "store", "tent", "barn", "platform", "track", "chimney",
        "skyscraper", "lighthouse", "windmill", "garage",
    ),
    "tools": (
        "ladder", "hose", "shovel", "rope", "chain", "bucket", "broom", "hammer", "flag",
        "balloon", "poster", "scissors", "wrench", "screwdriver", "wheelbarrow", "flashlight",
    ),
    "toys and music": (
        "teddy bear", "doll", "toy", "guitar", "piano", "drum", "violin", "trumpet", "puzzle",
        "harmonica", "accordion", "banjo",
    ),
}  # fmt: skip

ADJECTIVE_GROUPS: dict[str, tuple[str, ...]] = {
    "colours": ("white", "black", "blue", "green", "red", "brown", "yellow", "gray", "golden"),
    "materials": ("wooden", "metallic", "ceramic", "concrete"),
    "sizes": (
        "large", "small", "big", "tall", "little", "long", "short", "huge", "tiny", "wide",
        "thin", "narrow", "heavy",
    ),
    "ages": ("young", "old", "new", "elderly"),
    "states": ("open", "empty", "clean", "dry", "broken", "full", "fresh", "cooked", "sliced"),
    "patterns": ("striped", "spotted", "checkered", "colorful"),
    "textures": ("shiny", "smooth", "bright", "soft", "curly"),
    "shapes": ("flat", "rectangular"),
}  # fmt: skip

# Noun group -> adjective groups whose adjectives may describe its objects.
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "people": ("ages", "sizes"),
    "body": ("colours", "sizes", "states"),
    "clothing": ("colours", "patterns", "materials", "states", "sizes"),
    "accessories": ("colours", "materials", "sizes", "patterns"),
    "animals": ("colours", "sizes", "ages", "textures", "patterns", "states"),
    "vehicles": ("colours", "sizes", "ages", "states", "textures"),
    "street": ("colours", "materials", "sizes", "states", "shapes"),
    "furniture": ("colours", "materials", "sizes", "ages", "states", "shapes"),
    "household": ("colours", "materials", "sizes", "patterns", "shapes", "states"),
    "kitchen": ("colours", "materials", "states", "shapes", "sizes"),
    "food": ("colours", "states", "sizes", "shapes"),
    "electronics": ("colours", "sizes", "states", "textures", "shapes", "ages"),
    "sports": ("colours", "sizes", "patterns", "states"),
    "nature": ("colours", "sizes", "states", "textures"),
    "buildings": ("colours", "materials", "sizes", "ages", "states", "textures"),
    "tools": ("colours", "materials", "sizes"),
    "toys and music": ("colours", "materials", "sizes", "textures"),
}

# How often an adjective group is chosen for an object, relative to the others it allows.
ATTRIBUTE_GROUP_WEIGHTS: dict[str, float] = {
    "colours": 4.0,
    "materials": 1.5,
    "sizes": 1.5,
    "ages": 1.0,
    "states": 1.0,
    "patterns": 0.6,
    "textures": 0.8,
    "shapes": 0.6,
}

# Nouns that take no indefinite article ("some water", "the grass").
MASS_NOUNS = frozenset(
    {
        "hair", "grass", "sky", "water", "sand", "snow", "dirt", "mud", "ground", "rice",
        "soup", "meat", "bread", "cheese", "salad", "lettuce", "broccoli", "coffee", "juice",
        "wine", "ice cream", "crowd", "beard", "field", "ocean", "floor", "ceiling",
    }
)  # fmt: skip

# Nouns that are plural in form. Captions use them without "a" and with plural verbs.
PLURAL_NOUNS = frozenset(
    {"jeans", "shorts", "pants", "glasses", "sunglasses", "headphones", "scissors", "overalls",
     "goggles"}
)  # fmt: skip

# Caption-only synonyms: word in the knowledge -> a word with the same meaning that is not.
SYNONYMS: dict[str, str] = {
    "man": "gentleman",
    "child": "youngster",
    "dog": "puppy",
    "cat": "kitten",
    "car": "automobile",
    "bicycle": "bike",
    "motorcycle": "motorbike",
    "couch": "sofa",
    "television": "tv",
    "refrigerator": "fridge",
    "phone": "telephone",
    "pants": "trousers",
    "road": "highway",
    "rock": "stone",
    "airplane": "jet",
    "glasses": "spectacles",
}

# Content words that captions use but the knowledge source never annotates.
CAPTION_ONLY_NOUNS = (
    "picture", "photo", "image", "scene", "view", "day", "area", "group", "couple", "front",
    "top", "side", "middle", "background", "distance", "afternoon",
)  # fmt: skip
CAPTION_ONLY_ADJECTIVES = ("beautiful", "nice", "sunny", "busy", "pretty", "cute", "lovely")

# Background "stuff" that fills large parts of an image.
STUFF_NOUNS = frozenset(
    {
        "grass", "sky", "water", "sand", "snow", "dirt", "mud", "ground", "field", "ocean",
        "wave", "river", "lake", "mountain", "hill", "tree", "bush", "cloud", "wall", "floor",
        "ceiling", "road", "street", "sidewalk", "building", "fence", "beach", "track", "shadow",
    }
)  # fmt: skip


def nouns() -> list[str]:
    """Return every noun concept, group by group in list order."""
    return [noun for group in NOUN_GROUPS.values() for noun in group]


def adjectives() -> list[str]:
    """Return every adjective concept, group by group in list order."""
    return [adjective for group in ADJECTIVE_GROUPS.values() for adjective in group]


def word_groups() -> dict[str, str]:
    """Return word -> semantic group for every noun and adjective."""
    groups = {noun: group for group, members in NOUN_GROUPS.items() for noun in members}
    for group, members in ADJECTIVE_GROUPS.items():
        groups.update({adjective: group for adjective in members})
    return groups


def check_vocabulary() -> None:
    """Raise ValueError when the lists disagree: a repeated word, a caption-only concept, an unknown
    word or group."""
    words = nouns() + adjectives()
    duplicates = sorted({word for word in words if words.count(word) > 1})
    if duplicates:
        raise ValueError(f"synthetic vocabulary lists these words twice: {duplicates}")

    concepts = set(words)
    outside = set(SYNONYMS.values()) | set(CAPTION_ONLY_NOUNS) | set(CAPTION_ONLY_ADJECTIVES)
    clashes = sorted(outside & concepts)
    if clashes:
        raise ValueError(f"caption-only words must not be concepts, found: {clashes}")

    scene_stuff = {noun for stuff, _ in SCENES.values() for noun in stuff}
    unknown = sorted(
        (set(SYNONYMS) | MASS_NOUNS | PLURAL_NOUNS | STUFF_NOUNS | scene_stuff) - concepts
    )
    if unknown:
        raise ValueError(f"word sets name words that are not nouns of the vocabulary: {unknown}")
    if not scene_stuff <= STUFF_NOUNS:
        raise ValueError(
            f"scene stuff missing from STUFF_NOUNS: {sorted(scene_stuff - STUFF_NOUNS)}"
        )

    scene_groups = {group for _, weights in SCENES.values() for group in weights}
    if not scene_groups | set(ATTRIBUTE_GROUPS) <= set(NOUN_GROUPS):
        raise ValueError("SCENES or ATTRIBUTE_GROUPS name a noun group that NOUN_GROUPS lacks")
    if set(ATTRIBUTE_GROUPS) != set(NOUN_GROUPS):
        raise ValueError("ATTRIBUTE_GROUPS must list the adjective groups of every noun group")
    allowed = {group for groups in ATTRIBUTE_GROUPS.values() for group in groups}
    if not allowed <= set(ADJECTIVE_GROUPS) or set(ATTRIBUTE_GROUP_WEIGHTS) != set(
        ADJECTIVE_GROUPS
    ):
        raise ValueError(
            "ATTRIBUTE_GROUPS and ATTRIBUTE_GROUP_WEIGHTS must use the adjective groups"
        )


# Scene -> (background stuff nouns, noun group -> weight of its objects in that scene).
SCENES: dict[str, tuple[tuple[str, ...], dict[str, float]]] = {
    "street": (
        ("road", "street", "sidewalk", "building", "sky", "tree"),
        {"vehicles": 3, "street": 3, "people": 2, "clothing": 2, "accessories": 1, "body": 1},
    ),
    "park": (
        ("grass", "tree", "sky", "bush", "ground"),
        {"people": 2, "animals": 2, "sports": 2, "clothing": 1.5, "street": 0.5, "body": 1},
    ),
    "beach": (
        ("sand", "water", "ocean", "wave", "sky", "beach"),
        {"people": 2, "sports": 2, "clothing": 1.5, "animals": 0.5, "vehicles": 0.5, "body": 1},
    ),
    "snow": (
        ("snow", "mountain", "sky", "tree", "hill"),
        {"people": 2, "sports": 3, "clothing": 2, "body": 0.5},
    ),
    "farm": (
        ("grass", "field", "fence", "hill", "sky", "dirt"),
        {"animals": 4, "vehicles": 0.5, "people": 1, "tools": 1},
    ),
    "waterside": (
        ("water", "river", "lake", "sky", "tree", "mud"),
        {"vehicles": 1, "animals": 1.5, "people": 1, "clothing": 0.5},
    ),
    "kitchen": (
        ("wall", "floor", "ceiling"),
        {"kitchen": 4, "food": 3, "household": 1, "furniture": 1, "people": 0.5},
    ),
    "dining": (
        ("wall", "floor"),
        {"food": 4, "kitchen": 3, "furniture": 1, "people": 1},
    ),
    "living room": (
        ("wall", "floor", "ceiling"),
        {"furniture": 4, "household": 3, "electronics": 2, "toys and music": 1, "people": 1,
         "animals": 0.5},
    ),
    "office": (
        ("wall", "floor", "ceiling"),
        {"electronics": 4, "furniture": 2, "household": 1, "people": 1, "accessories": 0.5},
    ),
    "bathroom": (
        ("wall", "floor"),
        {"household": 4, "kitchen": 0.5},
    ),
    "station": (
        ("track", "ground", "sky", "building"),
        {"vehicles": 3, "people": 2, "street": 1, "accessories": 1, "clothing": 1},
    ),
}  # fmt: skip

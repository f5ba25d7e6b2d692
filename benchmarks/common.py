"""Shared parts of the benchmark scripts: inputs, timers, memory probes, machine facts, output.

Every benchmark script accepts `--quick` (tiny sizes, for the smoke test) and `--json PATH` (where
to write its figures). `run_all` runs each script as its own process, so each peak-memory figure
belongs to one benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nltk
import numpy as np
import psutil
import scipy
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from mack import config
from mack.io import write_json
from mack.knowledge import ATTRIBUTE, OBJECT, Knowledge
from mack.text import ParsedText, TextParser, Unit, load_vocab_file

logger = logging.getLogger(__name__)

BENCHMARKS_ROOT = Path(__file__).resolve().parent
JSON_ENV = "MACK_BENCH_JSON"  # run_all sets it for scripts that take no --json option
PARSE_CACHE_VERSION = 1


# ---------------------------------------------------------------- command line and output


def argument_parser(description: str) -> argparse.ArgumentParser:
    """Return a parser with the options every benchmark script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke run (seconds, not minutes)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"write the figures to this JSON file (default: ${JSON_ENV}, else no file)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="BLAS and torch threads (default: 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--data-root", default=None, help="real-data folder (default: $MACK_DATA or ../shared/data)"
    )
    return parser


def setup_run(args: argparse.Namespace) -> None:
    """Configure logging, the thread counts of torch and every BLAS library, and the NLTK path.

    When $NLTK_DATA is unset, <data root>/nltk_data joins nltk.data.path, so `make bench` finds
    the tagger of the real sample data without extra settings.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads)

    tagger_data = config.data_root(args.data_root, must_exist=False) / "nltk_data"
    if not os.environ.get("NLTK_DATA") and tagger_data.is_dir():
        nltk.data.path.append(str(tagger_data))


def finish_run(name: str, args: argparse.Namespace, figures: dict[str, Any]) -> dict[str, Any]:
    """Print `figures` one per line and write them to --json or $MACK_BENCH_JSON if given."""
    payload = {"benchmark": name, "quick": bool(args.quick), **figures}
    for key, value in flatten(payload).items():
        print(f"{key}: {_format_value(value)}")
    path = args.json or (Path(os.environ[JSON_ENV]) if os.environ.get(JSON_ENV) else None)
    if path is not None:
        write_json(path, payload)
    return payload


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return nested dicts as one dict with dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def check(value: float, limit: float, *, at_least: bool = False) -> dict[str, Any]:
    """Return {"value", "target", "met"} for a figure that must stay below (or reach) a limit."""
    met = value >= limit if at_least else value <= limit
    return {"value": value, "target": (">= " if at_least else "<= ") + f"{limit:g}", "met": met}


# ---------------------------------------------------------------- timing and memory


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """Measure a block into the yielded dict: wall-clock "seconds" and "cpu_seconds".

    cpu_seconds is the CPU time of every thread of this process (time.process_time), which
    depends less than the wall-clock time on what else runs on the machine.
    """
    result = {"seconds": float("nan"), "cpu_seconds": float("nan")}
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - start_cpu


def rss_bytes() -> int:
    """Return the current resident set size of this process."""
    return psutil.Process().memory_info().rss


def max_rss_bytes() -> int:
    """Return the peak resident set size of this process so far (getrusage, Linux kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class MemoryProbe:
    """Poll this process's RSS in a thread while a block runs; `peak - before` is its increment.

    A peak shorter than the polling interval can be missed, so read max_rss_bytes() as well.
    """

    interval: float = 0.005
    before: int = 0
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemoryProbe:
        self.before = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    def _poll(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, process.memory_info().rss)

    @property
    def increment(self) -> int:
        return self.peak - self.before


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


# ---------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """Return the CPU model, core count, RAM, load average and library versions of this run."""
    blas = [
        f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('num_threads')} threads)"
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(gib(psutil.virtual_memory().total), 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "blas": blas,
    }


def _cpu_model() -> str:
    """Return lscpu's "Model name", else /proc/cpuinfo's, else platform.processor()."""
    try:
        output = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        for line in output.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------- inputs


@dataclass
class Vocabulary:
    """The bottom-up-attention Visual Genome vocabulary, first name of each line as the concept.

    objects, attributes: concept names in file order. A name listed in both files is kept once,
    as an object, because a knowledge word has one type. synonyms: other names of a line -> its
    first name.
    """

    objects: list[str]
    attributes: list[str]
    synonyms: dict[str, str]
    source_lines: int

    @property
    def words(self) -> list[str]:
        return self.objects + self.attributes


def load_vocabulary(data_root: str | None = None) -> Vocabulary:
    """Read vg/vocab/{objects,attributes}_vocab.txt from the real-data folder."""
    vocab_dir = config.data_root(data_root) / "vg" / "vocab"
    object_lines = load_vocab_file(vocab_dir / "objects_vocab.txt")
    attribute_lines = load_vocab_file(vocab_dir / "attributes_vocab.txt")

    objects = list(dict.fromkeys(names[0] for names in object_lines))
    known = set(objects)
    attributes = [
        name for name in dict.fromkeys(n[0] for n in attribute_lines) if name not in known
    ]
    concepts = set(objects) | set(attributes)
    synonyms = {
        name: names[0]
        for names in object_lines + attribute_lines
        for name in names[1:]
        if name not in concepts
    }
    return Vocabulary(objects, attributes, synonyms, len(object_lines) + len(attribute_lines))


def random_knowledge(words: Sequence[str], n_objects: int, dim: int, seed: int) -> Knowledge:
    """Return a knowledge whose first n_objects words are objects, with random prototypes.

    prototypes and random_regions: (K, dim) float32 uniform in [0, 1), like non-negative CNN
    features.
    """
    rng = np.random.default_rng(seed)
    n_words = len(words)
    return Knowledge(
        words=list(words),
        types=[OBJECT] * n_objects + [ATTRIBUTE] * (n_words - n_objects),
        prototypes=rng.random((n_words, dim), dtype=np.float32),
        counts=np.ones(n_words, dtype=np.int64),
        provenance={"source": "benchmarks: random prototypes", "seed": seed},
        random_regions=rng.random((n_words, dim), dtype=np.float32),
    )


def random_regions(n_images: int, n_regions: int, dim: int, seed: int) -> np.ndarray:
    """Return `(n_images, n_regions, dim)` float32 uniform in [0, 1), written row by row."""
    rng = np.random.default_rng(seed)
    features = np.empty((n_images, n_regions, dim), dtype=np.float32)
    for image in range(n_images):
        rng.random((n_regions, dim), dtype=np.float32, out=features[image])
    return features


def read_captions(name: str, data_root: str | None = None) -> list[str]:
    """Return the lines of captions/<name> in the real-data folder (5 per image, SCAN order)."""
    path = config.data_root(data_root) / "captions" / name
    if not path.is_file():
        raise config.DataNotFoundError(f"caption file not found: {path}")
    return path.read_text(encoding="utf-8").splitlines()


@dataclass
class ParsedCaptions:
    """Captions parsed once with TextParser, and where the parse came from."""

    texts: list[ParsedText]
    parse_seconds: float  # the TextParser run that produced them (maybe an earlier process)
    cached: bool  # True when read from the parse cache of an earlier run


def parse_captions(
    captions: Sequence[str], vocabulary: Vocabulary, knowledge: Knowledge, cache: bool = True
) -> ParsedCaptions:
    """Parse captions with TextParser.from_knowledge, reusing an earlier run's result if allowed.

    The cache file under cache_root()/benchmarks is keyed by the captions, the knowledge words and
    types, the synonyms and the source of mack/text.py, so any change there parses again.
    """
    path = _parse_cache_path(captions, vocabulary, knowledge)
    if cache and path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        texts = [
            _parsed_from_json(text, item)
            for text, item in zip(captions, stored["texts"], strict=True)
        ]
        return ParsedCaptions(texts, stored["parse_seconds"], cached=True)

    parser = TextParser.from_knowledge(knowledge, synonyms=vocabulary.synonyms)
    with timer() as elapsed:
        texts = parser.parse_many(captions, progress=False)
    if cache:
        items = [_parsed_to_json(parsed) for parsed in texts]
        write_json(path, {"parse_seconds": elapsed["seconds"], "texts": items})
    return ParsedCaptions(texts, elapsed["seconds"], cached=False)


def _parse_cache_path(
    captions: Sequence[str], vocabulary: Vocabulary, knowledge: Knowledge
) -> Path:
    digest = hashlib.sha256()
    digest.update(f"version {PARSE_CACHE_VERSION}\n".encode())
    digest.update(Path(sys.modules[TextParser.__module__].__file__).read_bytes())
    for part in (captions, knowledge.words, knowledge.types, sorted(vocabulary.synonyms.items())):
        digest.update(json.dumps(list(part)).encode("utf-8"))
    return config.cache_root() / "benchmarks" / f"parsed-{digest.hexdigest()[:20]}.json"


def _parsed_to_json(parsed: ParsedText) -> dict[str, Any]:
    return {
        "units": [[unit.noun, list(unit.adjectives)] for unit in parsed.units],
        "unknown": parsed.unknown,
        "dropped_adjectives": parsed.dropped_adjectives,
    }


def _parsed_from_json(text: str, item: dict[str, Any]) -> ParsedText:
    units = [Unit(noun, tuple(adjectives)) for noun, adjectives in item["units"]]
    return ParsedText(text, units, list(item["unknown"]), int(item["dropped_adjectives"]))


@dataclass
class UnitStatistics:
    """Sizes of the scorer's inputs, counted here independently of mack.matching.

    n_words: distinct words of all units. n_units: distinct units (same words, same order).
    n_single / n_multi: distinct units of one word entry / of several. n_occurrences: all units.
    n_text_units: distinct (text, unit) pairs. n_empty_texts: texts without a unit.
    """

    n_words: int
    n_units: int
    n_single: int
    n_multi: int
    n_occurrences: int
    n_text_units: int
    n_empty_texts: int


def unit_statistics(texts: Sequence[ParsedText], use_adjectives: bool = True) -> UnitStatistics:
    words: set[str] = set()
    units: set[tuple[str, ...]] = set()
    n_text_units = 0
    for parsed in texts:
        keys = [(u.noun, *u.adjectives) if use_adjectives else (u.noun,) for u in parsed.units]
        n_text_units += len(set(keys))
        units.update(keys)
        for key in keys:
            words.update(key)
    n_single = sum(1 for key in units if len(key) == 1)
    return UnitStatistics(
        n_words=len(words),
        n_units=len(units),
        n_single=n_single,
        n_multi=len(units) - n_single,
        n_occurrences=sum(len(parsed.units) for parsed in texts),
        n_text_units=n_text_units,
        n_empty_texts=sum(1 for parsed in texts if not parsed.units),
    )

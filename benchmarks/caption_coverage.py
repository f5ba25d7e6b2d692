"""How well the bottom-up Visual Genome vocabulary covers the real test captions.

Parses the Flickr30k 1K test captions (5,000) and the MSCOCO 5K test captions (25,000) of the
real-data folder with mack.text.TextParser. The vocabulary is the bottom-up-attention VG one
(vg/vocab: 1,600 object lines and 400 attribute lines). A line may list comma-separated
synonyms: its first name is the concept, and the others map to it. Reports per dataset: share of
captions with at least one unit, units per caption, adjectives per unit, dropped adjectives and
unknown words per caption, the 20 most frequent unknown words, and the parse time (target: all
30,000 captions in under 60 s of wall time). The parse is not cached, so the time is this
run's; one warm-up caption is parsed first and timed apart, and the CPU time of the parse is
reported too, because on a shared machine the wall time depends on the load.

Run: `NLTK_DATA=../shared/data/nltk_data python -m benchmarks.caption_coverage`. It prints a
Markdown table and writes benchmarks/caption_coverage.json (or --json PATH). `--quick` parses
the first 200 captions of each file and writes no file unless --json is given.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks import common
from mack.coco_mini import ensure_tagger
from mack.text import ParsedText, TextParser

DATASETS = {"flickr30k_1k_test": "f30k_test_caps.txt", "mscoco_5k_test": "coco_testall_caps.txt"}
TARGET_SECONDS = 60.0
QUICK_CAPTIONS = 200
TOP_UNKNOWN = 20


def coverage(parsed: Sequence[ParsedText], seconds: float) -> dict[str, Any]:
    """Return the coverage figures of one dataset's parsed captions."""
    n_captions = len(parsed)
    n_units = sum(len(text.units) for text in parsed)
    n_adjectives = sum(len(unit.adjectives) for text in parsed for unit in text.units)
    unknown = Counter(word for text in parsed for word in text.unknown)
    return {
        "captions": n_captions,
        "share_with_unit_percent": 100 * sum(1 for text in parsed if text.units) / n_captions,
        "units_per_caption": n_units / n_captions,
        "adjectives_per_unit": n_adjectives / n_units if n_units else 0.0,
        "units_with_adjective_percent": 100
        * sum(1 for text in parsed for unit in text.units if unit.adjectives)
        / max(n_units, 1),
        "dropped_adjectives_per_caption": sum(t.dropped_adjectives for t in parsed) / n_captions,
        "unknown_words_per_caption": sum(unknown.values()) / n_captions,
        "distinct_unknown_words": len(unknown),
        "top_unknown_words": [[word, count] for word, count in unknown.most_common(TOP_UNKNOWN)],
        "parse_seconds": seconds,
        "captions_per_second": n_captions / seconds,
    }


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """Return the figures as a Markdown table, one column per dataset."""
    rows = [
        ("captions", "captions", "{:,}"),
        ("with >= 1 unit (%)", "share_with_unit_percent", "{:.1f}"),
        ("units per caption", "units_per_caption", "{:.2f}"),
        ("adjectives per unit", "adjectives_per_unit", "{:.3f}"),
        ("units with an adjective (%)", "units_with_adjective_percent", "{:.1f}"),
        ("dropped adjectives per caption", "dropped_adjectives_per_caption", "{:.3f}"),
        ("unknown words per caption", "unknown_words_per_caption", "{:.2f}"),
        ("distinct unknown words", "distinct_unknown_words", "{:,}"),
        ("parse time (s)", "parse_seconds", "{:.1f}"),
        ("parse CPU time (s)", "parse_cpu_seconds", "{:.1f}"),
        ("captions per second", "captions_per_second", "{:.0f}"),
    ]
    names = list(results)
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in rows:
        lines.append(
            f"| {label} | " + " | ".join(fmt.format(results[n][key]) for n in names) + " |"
        )
    for name in names:
        top = ", ".join(f"{word} ({count})" for word, count in results[name]["top_unknown_words"])
        lines.append(f"\n{name}, {TOP_UNKNOWN} most frequent unknown words: {top}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = common.argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    common.setup_run(args)
    if args.json is None and not args.quick:
        args.json = common.BENCHMARKS_ROOT / "caption_coverage.json"

    ensure_tagger()
    vocabulary = common.load_vocabulary(args.data_root)
    started = time.perf_counter()
    text_parser = TextParser(vocabulary.objects, vocabulary.attributes, vocabulary.synonyms)
    setup_seconds = time.perf_counter() - started
    with common.timer() as warm_up:  # the tagger builds its lookup tables on the first text
        text_parser.parse("A young man in a red shirt rides a brown horse.")

    results: dict[str, dict[str, Any]] = {}
    for name, file_name in DATASETS.items():
        captions = common.read_captions(file_name, args.data_root)
        if args.quick:
            captions = captions[:QUICK_CAPTIONS]
        cpu_start = time.process_time()
        with common.timer() as elapsed:
            parsed = text_parser.parse_many(captions, progress=False)
        results[name] = coverage(parsed, elapsed["seconds"])
        results[name]["parse_cpu_seconds"] = time.process_time() - cpu_start

    total_seconds = sum(result["parse_seconds"] for result in results.values())
    print(markdown(results))
    figures = {
        "vocabulary": {
            "objects": len(vocabulary.objects),
            "attributes": len(vocabulary.attributes),
            "synonyms": len(vocabulary.synonyms),
            "source_lines": vocabulary.source_lines,
        },
        "datasets": results,
        "parser_setup_seconds": setup_seconds,
        "first_parse_seconds": warm_up["seconds"],
        "total_captions": sum(result["captions"] for result in results.values()),
        "total_parse_seconds": common.check(total_seconds, TARGET_SECONDS),
        "machine": common.machine_info(),
    }
    return common.finish_run("caption_coverage", args, figures)


if __name__ == "__main__":
    main()

"""Smoke tests of the benchmark scripts: each runs with --quick and writes the expected JSON keys."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from benchmarks import common, run_all

from helpers import needs_real_data


@pytest.fixture(autouse=True)
def restore_threads():
    """The scripts set the torch and BLAS thread counts of the process; put them back after."""
    torch_threads = torch.get_num_threads()
    with threadpool_limits(limits=None):
        yield
    torch.set_num_threads(torch_threads)


def run_quick(module: str, tmp_path, monkeypatch) -> dict:
    """Run `python -m <module> --quick --json FILE` in this process and return the JSON."""
    output = tmp_path / f"{module}.json"
    monkeypatch.setenv("MACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", [module, "--quick", "--json", str(output), "--threads", "1"])
    runpy.run_module(module, run_name="__main__")
    return json.loads(output.read_text())


def missing_keys(figures: dict, keys) -> list[str]:
    flat = common.flatten(figures)
    return [key for key in keys if key not in flat]


@needs_real_data
def test_scorer_quick_writes_figures(tmp_path, monkeypatch):
    figures = run_quick("benchmarks.scorer", tmp_path, monkeypatch)

    for size in ("flickr30k", "coco5k"):
        keys = [
            f"{size}.{name}"
            for name in (
                "scorer_seconds",
                "matmul_seconds",
                "scorer_over_matmul",
                "parse_seconds",
                "reference_extrapolated_seconds",
                "speedup_over_reference",
                "max_abs_diff",
                "peak_rss_gb",
                "predicted_memory_increment_gb",
                "scorer_memory_increment_gb",
                "units.n_words",
                "targets.scorer_seconds.met",
            )
        ]
        assert missing_keys(figures, keys) == []
        assert figures[size]["max_abs_diff"] < 1e-5
        assert max(figures[size]["ablation_max_abs_diff"].values()) < 1e-5
        assert len(figures[size]["ablation_max_abs_diff"]) == 4 * 2 * 2 + 2
    assert figures["coco5k"]["targets"]["peak_rss_gb"]["target"] == "<= 6"
    assert figures["machine"]["cores"] >= 1
    assert figures["reported_authors_cpu_seconds"]["value"] == [1800, 2100]


@needs_real_data
def test_knowledge_build_quick_writes_figures(tmp_path, monkeypatch):
    figures = run_quick("benchmarks.knowledge_build", tmp_path, monkeypatch)

    keys = ["bytes", "read_seconds_before_build", "build_seconds", "build_over_read"]
    assert missing_keys(figures, keys) == []
    assert figures["bytes"] >= 200_000
    assert figures["knowledge_words"] > 0
    assert figures["regions"] == figures["images"] * 36


@needs_real_data
def test_rerank_quick_writes_figures(tmp_path, monkeypatch):
    figures = run_quick("benchmarks.rerank", tmp_path, monkeypatch)

    keys = ["rerank_seconds", "pair_scoring_seconds", "pairs_scored", "max_abs_diff"]
    for base in ("caption_word_base", "random_base"):
        assert missing_keys(figures[base], keys) == []
        assert figures[base]["max_abs_diff"] < 1e-5
        assert 0 < figures[base]["pairs_scored"] <= figures["n_images"] * figures["n_texts"]
    # The caption-word base ranks true pairs far above chance, and the random base does not.
    assert (
        figures["caption_word_base"]["base_recall"]["rsum"]
        > 1.5 * (figures["random_base"]["base_recall"]["rsum"])
    )


def test_caption_word_base_by_hand(monkeypatch):
    from benchmarks import rerank as bench_rerank
    from mack.text import ParsedText, Unit

    monkeypatch.setattr(bench_rerank, "BASE_NOISE", 0.0)
    knowledge = common.random_knowledge(["dog", "horse", "man"], 3, 4, seed=0)
    own = [["man", "horse"], ["man"], ["man"], ["horse"], ["man"], ["dog"], [], [], [], []]
    texts = [ParsedText(" ".join(words), [Unit(word) for word in words]) for words in own]

    base = bench_rerank.caption_word_base(knowledge, texts, 2, np.random.default_rng(0))

    # Image 0's captions name {man, horse}, and image 1's name {dog}.
    assert base.shape == (2, 10)
    assert base[0, 0] == pytest.approx(2 / np.sqrt(2 * 2))
    assert base[0, 1] == pytest.approx(1 / np.sqrt(1 * 2))
    assert base[1, 1] == 0.0
    assert base[1, 5] == pytest.approx(1.0)
    assert base[0, 6] == 0.0  # a text without known words


@needs_real_data
def test_parse_cache_returns_same_units(tmp_path, monkeypatch):
    monkeypatch.setenv("MACK_CACHE", str(tmp_path))
    vocabulary = common.load_vocabulary()
    knowledge = common.random_knowledge(vocabulary.words, len(vocabulary.objects), 8, seed=0)
    captions = common.read_captions("f30k_test_caps.txt")[:20]

    first = common.parse_captions(captions, vocabulary, knowledge)
    second = common.parse_captions(captions, vocabulary, knowledge)

    assert not first.cached
    assert second.cached
    assert second.texts == first.texts


def test_unit_statistics_counts_by_hand():
    from mack.text import ParsedText, Unit

    texts = [
        ParsedText("a", [Unit("dog", ("red",)), Unit("dog", ()), Unit("dog", ("red",))], [], 0),
        ParsedText("b", [Unit("cat", ())], [], 0),
        ParsedText("c", [], [], 0),
    ]
    stats = common.unit_statistics(texts)

    assert stats.n_words == 3  # dog, red, cat
    assert stats.n_units == 3  # (dog, red), (dog,), (cat,)
    assert stats.n_single == 2
    assert stats.n_multi == 1
    assert stats.n_occurrences == 4
    assert stats.n_text_units == 3
    assert stats.n_empty_texts == 1


def test_predicted_peak_matches_formula():
    from benchmarks.scorer import predicted_peak

    stats = common.UnitStatistics(
        n_words=10, n_units=7, n_single=5, n_multi=2, n_occurrences=9, n_text_units=8,
        n_empty_texts=0,
    )  # fmt: skip
    chunk, peak = predicted_peak(stats, n_images=3, n_texts=4, n_regions=2, dim=6)

    assert chunk == 3
    per_region = 6 + 10 + 2
    per_image = 10 + 5 + 2 * 2 + 4
    assert peak == 4 * (3 * 4 + 10 * 6 + 3 * 2 * per_region + 3 * per_image)


def test_memory_probe_sees_allocation():
    with common.MemoryProbe(interval=0.001) as probe:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page written
        block += 1
    assert probe.increment >= 32 * 2**20


def test_run_logged_stops_a_script_on_timeout(tmp_path):
    command = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    log = tmp_path / "sleep.log"

    status, returncode = run_all.run_logged(command, log, tmp_path / "none.json", timeout=1.5)

    assert status == "timed out"
    assert returncode is None
    assert "started" in log.read_text()


def test_run_logged_reports_failure(tmp_path):
    command = [sys.executable, "-c", "raise SystemExit(3)"]
    status, returncode = run_all.run_logged(command, tmp_path / "x.log", tmp_path / "x.json", 30)

    assert status == "failed"
    assert returncode == 3


def test_run_all_markdown_lists_targets_and_status():
    run = {
        "started": "2026-01-01T00:00:00",
        "command": "python -m benchmarks.run_all",
        "total_seconds": 12.0,
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "ram_gib": 4.0,
            "load_average_1min": 0.5,
            "python": "3.11",
            "numpy": "2",
            "scipy": "1",
            "torch": "2",
            "blas": ["openblas"],
        },  # fmt: skip
        "benchmarks": {
            "rerank": {
                "status": "ok",
                "seconds": 7.0,
                "figures": {
                    "n_images": 5000,
                    "n_texts": 25000,
                    "k": 15,
                    "caption_word_base": {
                        "runs": 3,
                        "rerank_seconds": 6.5,
                        "targets": {"rerank_seconds": common.check(6.5, 5.0)},
                    },
                },
            },
            "vg_rehearsal": {"status": "not present"},
            "finetune_epoch": {
                "status": "ok",
                "seconds": 300.0,
                "figures": {"epoch": {"seconds_target": common.check(236.0, 180.0)}},
            },
        },
    }
    text = run_all.markdown(run)

    assert "Machine: Test CPU, 2 cores" in text
    assert (
        "| Re-ranking 5,000 x 25,000, k = 15, both directions, caption-word base, median of 3 runs "
        "(s) | 6.5 | <= 5 | **no** |" in text
    )
    assert "| vg_rehearsal | not present |  |" in text
    assert "| Fine-tuning: one epoch at Flickr30k size (s) | 236 | <= 180 | **no** |" in text

    run["quick"] = True
    quick_text = run_all.markdown(run)
    assert "Smoke run at tiny sizes" in quick_text
    assert "**no**" not in quick_text
    assert "| Fine-tuning: one epoch at Flickr30k size (s) | 236 | <= 180 |  |" in quick_text

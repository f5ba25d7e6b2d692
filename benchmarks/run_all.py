"""Run every benchmark script, each in its own process, and gather the figures.

Writes benchmarks/results.json (every figure of every script, the machine, the run times) and
benchmarks/results.md (a summary table with the targets). Each script's output goes to the
terminal and to build/benchmarks/<name>.log.

A script's figures are read from the JSON file it writes: this runner passes `--json PATH` to a
script whose source mentions that option, and sets $MACK_BENCH_JSON=PATH for the others. A script
that writes neither is looked up in results/<name>.json and benchmarks/<name>.json, if written
during its run.

Run: `python -m benchmarks.run_all` (`make bench`), or with `--quick` for a smoke run of the
scripts that have a --quick option.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from mack import config
from mack.io import atomic_write, write_json

OWN_SCRIPTS = ("scorer", "knowledge_build", "rerank")  # scorer first: it fills the parse cache
# The others, shortest expected run first, so a long one cannot use up the budget of the rest.
OTHER_SCRIPTS = ("caption_coverage", "finetune_epoch", "vg_rehearsal", "encoder_choice")
LOG_DIR = config.PROJECT_ROOT / "build" / "benchmarks"
QUICK_OUT_DIR = config.PROJECT_ROOT / "build" / "benchmarks-quick"
KILL_GRACE_SECONDS = 10

# Figures shown in results.md: (benchmark, dotted key in its JSON, label). A label's {fields}
# are filled from the figures of the key's section.
SUMMARY = (
    (
        "scorer",
        "flickr30k.scorer_seconds",
        "Flickr30k: score_matrix {n_images:,} x {n_texts:,} (s)",
    ),
    ("scorer", "flickr30k.matmul_seconds", "Flickr30k: plain float32 matmul {matmul_shape} (s)"),
    ("scorer", "flickr30k.scorer_over_matmul", "Flickr30k: score_matrix / matmul"),
    ("scorer", "flickr30k.scorer_over_matmul_cpu", "Flickr30k: the same ratio in CPU time"),
    ("scorer", "flickr30k.speedup_over_reference", "Flickr30k: speed-up over the reference"),
    ("scorer", "flickr30k.max_abs_diff", "Flickr30k: max abs difference to the reference"),
    ("scorer", "flickr30k.peak_rss_gb", "Flickr30k: peak RSS (GB)"),
    ("scorer", "flickr30k.parse_seconds", "Flickr30k: parsing {n_texts:,} captions, apart (s)"),
    ("scorer", "coco5k.scorer_seconds", "COCO 5K: score_matrix {n_images:,} x {n_texts:,} (s)"),
    ("scorer", "coco5k.matmul_seconds", "COCO 5K: plain float32 matmul {matmul_shape} (s)"),
    ("scorer", "coco5k.scorer_over_matmul", "COCO 5K: score_matrix / matmul"),
    ("scorer", "coco5k.scorer_over_matmul_cpu", "COCO 5K: the same ratio in CPU time"),
    ("scorer", "coco5k.speedup_over_reference", "COCO 5K: speed-up over the reference"),
    ("scorer", "coco5k.max_abs_diff", "COCO 5K: max abs difference to the reference"),
    ("scorer", "coco5k.peak_rss_gb", "COCO 5K: peak RSS (GB)"),
    ("scorer", "coco5k.scorer_memory_increment_gb", "COCO 5K: memory added by score_matrix (GB)"),
    ("scorer", "coco5k.predicted_memory_increment_gb", "COCO 5K: docstring formula (GB)"),
    ("scorer", "coco5k.parse_seconds", "COCO 5K: parsing {n_texts:,} captions, apart (s)"),
    ("knowledge_build", "bytes", "Knowledge build: bottom-up TSV bytes"),
    ("knowledge_build", "read_seconds_before_build", "Knowledge build: read-only pass, before (s)"),
    ("knowledge_build", "read_seconds_after_build", "Knowledge build: read-only pass, after (s)"),
    ("knowledge_build", "build_seconds", "Knowledge build: build (s)"),
    ("knowledge_build", "build_over_read", "Knowledge build: build / read"),
    (
        "knowledge_build",
        "build_cpu_seconds",
        "Knowledge build: build CPU time, both processes (s)",
    ),
    ("knowledge_build", "read_cpu_seconds", "Knowledge build: read-only pass CPU time (s)"),
    (
        "rerank",
        "caption_word_base.rerank_seconds",
        "Re-ranking {n_images:,} x {n_texts:,}, k = {k}, both directions, caption-word base, "
        "median of {runs} runs (s)",
    ),
    ("rerank", "caption_word_base.first_run.rerank_seconds", "Re-ranking: its first run (s)"),
    ("rerank", "caption_word_base.pair_scoring_seconds", "Re-ranking: of which score_pairs (s)"),
    (
        "rerank",
        "caption_word_base.product_gflop",
        "Re-ranking: GFLOP of its (image, word) products",
    ),
    ("rerank", "caption_word_base.base_recall.rsum", "Re-ranking: rsum of the caption-word base"),
    ("rerank", "random_base.rerank_seconds", "Re-ranking, random base (worst case), median (s)"),
    ("rerank", "random_base.pair_scoring_seconds", "Re-ranking, random base: score_pairs (s)"),
    ("rerank", "random_base.product_gflop", "Re-ranking, random base: GFLOP of its products"),
    ("rerank", "caption_word_base.max_abs_diff", "Re-ranking: max abs difference to the reference"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run at tiny sizes")
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only these scripts (names without .py)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds after which one script is stopped (default: 600)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=900.0,
        help="seconds for the whole run: a script gets at most what is left of it, and scripts "
        "that find none left are skipped (default: 900)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="folder for results.json and results.md (default: benchmarks/, or build/benchmarks-quick/ "
        "with --quick, so a smoke run never replaces the committed results)",
    )
    args = parser.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = QUICK_OUT_DIR if args.quick else common.BENCHMARKS_ROOT

    started = time.perf_counter()
    run = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": "python -m benchmarks.run_all " + " ".join(argv or sys.argv[1:]),
        "machine": common.machine_info(),
        "benchmarks": {},
    }
    for name in args.only or OWN_SCRIPTS + OTHER_SCRIPTS:
        # A stopped script may take KILL_GRACE_SECONDS more, and the results need a few seconds.
        left = args.budget - (time.perf_counter() - started) - KILL_GRACE_SECONDS - 5
        if left <= 0:
            run["benchmarks"][name] = {
                "status": f"skipped: the {args.budget:g} s budget is used up"
            }
            continue
        run["benchmarks"][name] = run_script(name, args, min(args.timeout, left))
    run["total_seconds"] = time.perf_counter() - started

    write_json(args.out_dir / "results.json", run)
    table = markdown(run)
    with atomic_write(args.out_dir / "results.md", "w") as handle:
        handle.write(table)
    print(table)


def run_script(name: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """Run benchmarks/<name>.py in a new process and return its status, time and figures.

    The process is stopped after `timeout` seconds.
    """
    path = common.BENCHMARKS_ROOT / f"{name}.py"
    if not path.is_file():
        return {"status": "not present"}
    options = script_options(name, path)
    if args.quick and "--quick" not in options:
        return {"status": "skipped: the script has no --quick option"}

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    json_path = LOG_DIR / f"{name}.json"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", f"benchmarks.{name}"]
    if "--json" in options:
        command += ["--json", str(json_path)]
    if args.quick:
        command.append("--quick")

    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started_at = time.time()
    status, returncode = run_logged(command, LOG_DIR / f"{name}.log", json_path, timeout)
    if status == "timed out":
        status = f"timed out after {timeout:.0f} s"
    return {
        "status": status,
        "returncode": returncode,
        "seconds": time.time() - started_at,
        "log": str(LOG_DIR / f"{name}.log"),
        "figures": read_figures(name, json_path, started_at),
    }


def script_options(name: str, path: Path) -> set[str]:
    """Return which of --quick and --json the script accepts.

    A script built on benchmarks.common.argument_parser takes both. Otherwise the option must
    appear as a quoted string in the source, as argparse's add_argument needs it.
    """
    source = path.read_text(encoding="utf-8")
    if name in OWN_SCRIPTS or "common.argument_parser(" in source:
        return {"--quick", "--json"}
    return {option for option in ("--quick", "--json") if f'"{option}"' in source}


def run_logged(
    command: list[str], log_path: Path, json_path: Path, timeout: float
) -> tuple[str, int | None]:
    """Run `command`, copying its output to the terminal and `log_path`; stop it after `timeout`.

    Returns ("ok" | "failed" | "timed out", return code). $NLTK_DATA defaults to the real-data
    folder's nltk_data, when that exists.
    """
    environment = {**os.environ, common.JSON_ENV: str(json_path)}
    tagger_data = config.data_root(must_exist=False) / "nltk_data"
    if not environment.get("NLTK_DATA") and tagger_data.is_dir():
        environment["NLTK_DATA"] = str(tagger_data)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            cwd=config.PROJECT_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        copier = threading.Thread(target=copy_output, args=(process.stdout, log), daemon=True)
        copier.start()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process)
            copier.join()
            return "timed out", None
        copier.join()
    return ("ok" if returncode == 0 else "failed"), returncode


def copy_output(stream, log) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)


def stop(process: subprocess.Popen) -> None:
    """Send SIGTERM to the script's process group, then SIGKILL if it is still running."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def read_figures(name: str, json_path: Path, started_at: float) -> dict[str, Any] | None:
    """Return the JSON figures the script wrote during this run, or None."""
    candidates = [
        json_path,
        config.PROJECT_ROOT / "results" / f"{name}.json",
        common.BENCHMARKS_ROOT / f"{name}.json",
    ]
    for path in candidates:
        if path.is_file() and path.stat().st_mtime >= started_at:
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                return {"error": f"{path} is not valid JSON: {error}"}
    return None


# ---------------------------------------------------------------- Markdown


def markdown(run: dict[str, Any]) -> str:
    """Return results.md: the machine, the summary table and the status of every script."""
    machine = run["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
        f"load average {machine['load_average_1min']} at the start. Python {machine['python']}, "
        f"numpy {machine['numpy']}, scipy {machine['scipy']}, torch {machine['torch']}, "
        f"BLAS: {'; '.join(machine['blas'])}.",
        "",
        f"Run: `{run['command'].strip()}` started {run['started']}, "
        f"{run['total_seconds']:.0f} s in all.",
        "",
        *(QUICK_NOTE if run.get("quick") else ()),
        "| benchmark | value | target | met |",
        "|---|---:|---|---|",
    ]
    for benchmark, key, label in SUMMARY:
        figures = (run["benchmarks"].get(benchmark) or {}).get("figures")
        if not figures:
            continue
        flat = common.flatten(figures)
        if key not in flat:
            continue
        section = figures
        for part in key.split(".")[:-1]:
            section = section[part]
        target_text, met = "", ""
        target = target_of(flat, key)
        if target is not None:
            target_text = target["target"]
            met = _met_text(target["met"], run)
        label = label.format_map(collections.ChainMap(section, figures))
        row = f"| {label} | {format_value(flat[key])} | {target_text} | {met} |"
        lines.append(row)

    lines += external_rows(run)
    reported = [] if run.get("quick") else ["", *reported_lines(run)]
    lines += [*reported, "", *status_lines(run), ""]
    return "\n".join(lines)


# Labels of the other scripts' targets. A target without one is shown as "<script>: <key>".
EXTERNAL_LABELS = {
    ("finetune_epoch", "epoch.seconds_target"): "Fine-tuning: one epoch at Flickr30k size (s)",
    ("caption_coverage", "total_parse_seconds"): "Parsing the Flickr30k and COCO test captions (s)",
}
QUICK_NOTE = (
    "Smoke run at tiny sizes (`--quick`): the labels name the full-size benchmarks, and the "
    "targets apply to the full sizes only, so the met column is left empty.",
    "",
)


def _met_text(met: bool, run: dict[str, Any]) -> str:
    if run.get("quick"):
        return ""
    return "yes" if met else "**no**"


def target_of(flat: dict[str, Any], key: str) -> dict[str, Any] | None:
    """Return the {"target", "met"} entry recorded for `key` under its section's "targets"."""
    section, _, name = key.rpartition(".")
    prefix = f"{section}.targets.{name}" if section else f"targets.{name}"
    if f"{prefix}.target" not in flat:
        return None
    return {"target": flat[f"{prefix}.target"], "met": flat[f"{prefix}.met"]}


def external_rows(run: dict[str, Any]) -> list[str]:
    """Rows for the other developers' scripts: every {"value", "target", "met"} in their JSON."""
    rows = []
    for name in OTHER_SCRIPTS:
        figures = (run["benchmarks"].get(name) or {}).get("figures") or {}
        flat = common.flatten(figures)
        for key in sorted(k for k in flat if k.endswith(".target")):
            base = key[: -len(".target")]
            if f"{base}.met" not in flat or f"{base}.value" not in flat:
                continue
            short = base.replace("targets.", "")
            label = EXTERNAL_LABELS.get((name, short), f"{name}: {short}")
            met_text = _met_text(flat[f"{base}.met"], run)
            value = format_value(flat[f"{base}.value"])
            rows.append(f"| {label} | {value} | {flat[key]} | {met_text} |")
    return rows


def reported_lines(run: dict[str, Any]) -> list[str]:
    figures = (run["benchmarks"].get("scorer") or {}).get("figures") or {}
    reported = figures.get("reported_authors_cpu_seconds")
    flickr = figures.get("flickr30k")
    if not reported or not flickr:
        return []
    low, high = (seconds / 60 for seconds in reported["value"])
    return [
        f"Reported, not measured here: the authors' released implementation takes {low:.0f} to "
        f"{high:.0f} minutes on a CPU for the Flickr30k 1K knowledge-only scores of one direction. "
        f"score_matrix computed the full Flickr30k 1K matrix in {flickr['scorer_seconds']:.1f} s "
        "in this run, on other hardware than theirs."
    ]


def status_lines(run: dict[str, Any]) -> list[str]:
    lines = ["| script | status | seconds |", "|---|---|---:|"]
    for name, record in run["benchmarks"].items():
        seconds = record.get("seconds")
        seconds_text = "" if seconds is None else f"{seconds:.0f}"
        lines.append(f"| {name} | {record['status']} | {seconds_text} |")
    return lines


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


if __name__ == "__main__":
    main()

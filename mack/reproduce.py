"""Run the numbered notebooks headless with papermill, in order, on one data tier.

`python -m mack.reproduce --tier synthetic` executes notebooks/0*.ipynb into build/notebooks/<tier>/,
then gathers every table into results/<tier>/SUMMARY.md. A notebook that already ran with the same
source and parameters is skipped, so a rerun after a failure resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from mack.config import PROJECT_ROOT
from mack.io import write_json
from mack.report import TIERS, check_tier, write_summary

logger = logging.getLogger(__name__)

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR = PROJECT_ROOT / "build" / "notebooks"
CELL_TIMEOUT_SECONDS = 1800


class NotebookFailedError(RuntimeError):
    """A notebook raised an error or timed out; the message names the notebook and the cell's error."""


def notebook_paths(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Return the numbered notebooks (01_..., 02_...) in run order."""
    paths = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no numbered notebooks found in {notebooks_dir}")
    return paths


def run_fingerprint(
    notebook: Path, parameters: dict[str, Any], package_dir: Path = PACKAGE_DIR
) -> str:
    """Return a sha256 of the notebook, the parameters it runs with and the mack package source.

    A change to any .py file of the package runs every notebook again, because the notebooks
    only call and show what the package computes.
    """
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run_notebook(notebook: Path, output: Path, parameters: dict[str, Any], timeout: int) -> None:
    """Execute one notebook with papermill; raise NotebookFailedError with the failing cell's error."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(notebook.parent),
            execution_timeout=timeout,
            progress_bar=False,
            kernel_name="python3",
        )
    except papermill.PapermillExecutionError as error:
        raise NotebookFailedError(
            f"{notebook.name} failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
            f"(executed copy with the traceback: {output})"
        ) from error
    except TimeoutError as error:
        raise NotebookFailedError(
            f"{notebook.name} timed out: a cell ran longer than {timeout} s ({output})"
        ) from error


def reproduce(
    tier: str,
    parameters: dict[str, Any] | None = None,
    only: list[str] | None = None,
    force: bool = False,
    timeout: int = CELL_TIMEOUT_SECONDS,
) -> list[dict[str, Any]]:
    """Run every numbered notebook on `tier`; return one record (name, seconds, skipped) per notebook."""
    check_tier(tier)
    parameters = {"tier": tier, **(parameters or {})}
    out_dir = BUILD_DIR / tier
    records = []
    for notebook in notebook_paths():
        if only and not any(notebook.name.startswith(prefix) for prefix in only):
            continue
        output = out_dir / notebook.name
        stamp = out_dir / f".{notebook.stem}.done.json"
        fingerprint = run_fingerprint(notebook, parameters)
        if not force and stamp.exists() and output.exists():
            if json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
                logger.info("%s: unchanged since its last successful run, skipped", notebook.name)
                records.append({"notebook": notebook.stem, "seconds": 0.0, "skipped": True})
                continue

        logger.info("%s: running on tier %s", notebook.name, tier)
        # The output is about to be replaced, so an older success must not outlive a failure.
        stamp.unlink(missing_ok=True)
        start = time.perf_counter()
        run_notebook(notebook, output, parameters, timeout)
        seconds = time.perf_counter() - start
        write_json(stamp, {"fingerprint": fingerprint, "seconds": seconds})
        logger.info("%s: done in %.1f s", notebook.name, seconds)
        records.append({"notebook": notebook.stem, "seconds": seconds, "skipped": False})

    write_summary(tier)
    return records


def parse_value(text: str) -> Any:
    """Read a --set value as JSON (numbers, booleans, lists), else keep it as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="synthetic", choices=TIERS, help="data tier to run on")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a notebook parameter (JSON value), e.g. --set epochs=5; repeatable",
    )
    parser.add_argument(
        "--only", nargs="*", help="run only notebooks whose names start with these prefixes"
    )
    parser.add_argument(
        "--force", action="store_true", help="rerun notebooks that already succeeded"
    )
    parser.add_argument(
        "--timeout", type=int, default=CELL_TIMEOUT_SECONDS, help="seconds allowed per cell"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parameters = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects NAME=VALUE, got {item!r}")
        parameters[name] = parse_value(value)

    try:
        records = reproduce(args.tier, parameters, args.only, args.force, args.timeout)
    except NotebookFailedError as error:
        logger.error("%s", error)
        return 1
    total = sum(r["seconds"] for r in records)
    logger.info("tier %s: %d notebooks in %.1f s", args.tier, len(records), total)
    write_json(PROJECT_ROOT / "build" / f"reproduce-{args.tier}.json", records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

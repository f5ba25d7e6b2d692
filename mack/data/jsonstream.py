"""Streaming reader for large JSON files, one array element at a time, built on ijson.

Visual Genome's objects.json and attributes.json are top-level arrays of about 108k image records
(GB in total), and COCO's instances JSON is one object whose "annotations" array contains most of
the data. ijson (with its yajl2_c backend when the C extension is installed) parses the file in
blocks of `buf_size` bytes, so memory holds one block plus the element being built.

Positions: ijson reports no position for a decoded value, so an element is named by its index
("record 12", '"annotations"[12]'). When the file is malformed, the reader parses it a second
time up to the failing block and feeds that block one byte at a time, which finds the byte
offset where the parser stopped. The error names that offset with its line and column (for a
token such as a number or a string, the parser stops at the token's end or at the byte after it).
"""

from __future__ import annotations

import ast
import codecs
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson
from tqdm.auto import tqdm

from mack.data import DataFormatError

BUF_SIZE = 1 << 16
_WHITESPACE = b" \t\n\r"
_BOM = codecs.BOM_UTF8
_OPEN = frozenset({"start_map", "start_array"})
_CLOSE = frozenset({"end_map", "end_array"})
_FIX = "The file is not valid JSON: re-download or re-export it (a truncated copy fails this way)"


@dataclass(frozen=True)
class JsonItem:
    """One decoded value and the array element or object member it came from."""

    key: str | None  # member of the top-level object, None for a top-level array
    index: int | None  # position in its array, None for a member that is not streamed
    value: Any

    @property
    def where(self) -> str:
        """Location for error messages, e.g. 'record 12' or '"annotations"[12]'."""
        return _describe(self.key, self.index)


def _describe(key: str | None, index: int | None) -> str:
    if key is not None and index is not None:
        return f'"{key}"[{index}]'
    if index is not None:
        return f"record {index}"
    if key is not None:
        return f'"{key}"'
    return "top-level value"


class _Cursor:
    """The element being read, for messages about a parse error."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.index: int | None = None

    @property
    def where(self) -> str:
        return _describe(self.key, self.index)


class _CountingReader:
    """Binary file wrapper that records where the last block handed to the parser starts."""

    def __init__(self, handle: BinaryIO, start: int, bar: tqdm):
        self.handle = handle
        self.offset = start
        self.block_start = start
        self.bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.block_start = self.offset
        self.offset += len(data)
        self.bar.update(len(data))
        return data


# ----------------------------------------------------------------------------- public readers


def iter_json_records(
    path: str | os.PathLike, *, progress: bool = False, buf_size: int = BUF_SIZE
) -> Iterator[JsonItem]:
    """Yield the elements of a top-level JSON array one at a time.

    A file whose top level is an object (a single Visual Genome record) yields that object once,
    with index None. Raises DataFormatError with the byte offset, line and column of malformed
    JSON and the index of the record being read.
    """
    return _stream(Path(path), "records", (), progress, buf_size)


def iter_json_members(
    path: str | os.PathLike,
    stream_keys: Collection[str],
    *,
    progress: bool = False,
    buf_size: int = BUF_SIZE,
) -> Iterator[JsonItem]:
    """Yield the members of a top-level JSON object, with arrays under `stream_keys` element by element.

    A streamed element has `key` and `index` set; any other member is yielded whole with index None.
    """
    return _stream(Path(path), "object", frozenset(stream_keys), progress, buf_size)


def _stream(
    path: Path, top: str, stream_keys: frozenset[str], progress: bool, buf_size: int
) -> Iterator[JsonItem]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found. Check the path or download the file.")
    bar = tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=not progress
    )
    with open(path, "rb") as handle, bar:
        start, first = _first_token(handle, path)
        _check_top_level(path, start, first, top)
        handle.seek(start)
        bar.update(start)
        reader = _CountingReader(handle, start, bar)
        cursor = _Cursor()
        try:
            if top == "records":
                yield from _records(reader, first, cursor, buf_size)
            else:
                yield from _members(reader, stream_keys, cursor, buf_size)
        except ijson.JSONError as error:
            raise _parse_error(path, start, reader.block_start, error, cursor, buf_size) from None


def _first_token(handle: BinaryIO, path: Path) -> tuple[int, bytes]:
    """Return the byte offset and value of the first byte that is not whitespace or a UTF-8 BOM."""
    offset = len(_BOM) if handle.read(len(_BOM)) == _BOM else 0
    handle.seek(offset)
    while block := handle.read(4096):
        stripped = block.lstrip(_WHITESPACE)
        if stripped:
            return offset + len(block) - len(stripped), stripped[:1]
        offset += len(block)
    raise DataFormatError(
        f"{path}, line 1, column 1: the file is empty. Re-download or re-export it"
    )


def _check_top_level(path: Path, start: int, first: bytes, top: str) -> None:
    allowed = b"[{" if top == "records" else b"{"
    if first in allowed:
        return
    expected = " or ".join(repr(chr(byte)) for byte in allowed)
    problem = f"expected {expected}, found {first.decode(errors='replace')!r}"
    raise _error_at(path, start, None, problem)


# ----------------------------------------------------------------------------- element streams


def _records(reader: _CountingReader, first: bytes, cursor: _Cursor, buf_size: int):
    if first == b"{":
        for value in ijson.items(reader, "", use_float=True, buf_size=buf_size):
            yield JsonItem(None, None, value)
        return

    cursor.index = 0
    for value in ijson.items(reader, "item", use_float=True, buf_size=buf_size):
        yield JsonItem(None, cursor.index, value)
        cursor.index += 1


def _members(reader: _CountingReader, stream_keys: frozenset[str], cursor: _Cursor, buf_size: int):
    """Walk the top-level object's events; build each streamed element and each other member."""
    events = ijson.basic_parse(reader, use_float=True, buf_size=buf_size)
    next(events)  # start_map: the first byte is "{"
    # The loop runs past the final end_map, so ijson raises for any data after the object.
    for event, key in events:
        if event != "map_key":
            continue
        cursor.key, cursor.index = key, None
        event, value = next(events)
        if key not in stream_keys or event != "start_array":
            yield JsonItem(key, None, _build(event, value, events))
            continue

        cursor.index = 0
        for event, value in events:
            if event == "end_array":
                break
            yield JsonItem(key, cursor.index, _build(event, value, events))
            cursor.index += 1


def _build(event: str, value: Any, events: Iterator[tuple[str, Any]]) -> Any:
    """Return the value that starts with (event, value), consuming its events."""
    if event not in _OPEN:
        return value
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1
    for event, value in events:
        builder.event(event, value)
        if event in _OPEN:
            depth += 1
        elif event in _CLOSE:
            depth -= 1
            if depth == 0:
                return builder.value
    raise AssertionError("ijson ended inside a value without raising")  # pragma: no cover


# ----------------------------------------------------------------------------- error positions


def _parse_error(
    path: Path, start: int, block_start: int, error: ijson.JSONError, cursor: _Cursor, buf_size: int
) -> DataFormatError:
    """Translate an ijson error into a DataFormatError naming the byte offset, line and column."""
    reason = _reason(error)
    if "premature eof" in reason.lower() or "incomplete json" in reason.lower():
        problem = "the file ends in the middle of a value (it may be truncated)"
        return _error_at(path, path.stat().st_size, cursor.where, problem)

    offset = _stop_offset(path, start, block_start, buf_size)
    if "trailing garbage" in reason or "additional data" in reason.lower():
        problem = "extra data after the top-level value"
    elif "utf8" in reason.lower() or "utf-8" in reason.lower():
        problem = f"invalid UTF-8 ({reason})"
    else:
        problem = f"invalid JSON ({reason})"
    return _error_at(path, offset, cursor.where, problem)


def _reason(error: ijson.JSONError) -> str:
    """Return the first line of ijson's message without yajl's "parse error: " prefix."""
    text = str(error)
    if text[:2] in ("b'", 'b"'):  # yajl2_c passes some messages on as the repr of bytes
        try:
            text = ast.literal_eval(text).decode("utf-8", errors="replace")
        except (ValueError, SyntaxError):
            pass
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    for prefix in ("parse error: ", "lexical error: "):
        first = first.removeprefix(prefix)
    return first.rstrip(".")


def _stop_offset(path: Path, start: int, block_start: int, buf_size: int) -> int:
    """Return the byte offset at which a parser fed the failing block one byte at a time raises.

    The bytes before `block_start` go in whole blocks, so this costs one more parse of the file
    up to the failing block. Should the error not show within two blocks of bytes fed one by
    one, the rest goes in whole blocks and the offset is only as precise as a block. Returns the
    file size if nothing raises before the end.
    """
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=True)
    byte_by_byte = range(block_start, block_start + 2 * buf_size)
    with open(path, "rb") as handle:
        handle.seek(start)
        offset = start
        try:
            while block := handle.read(1 if offset in byte_by_byte else buf_size):
                if offset < block_start:
                    block = block[: block_start - offset]
                    handle.seek(offset + len(block))
                parser.send(block)
                offset += len(block)
                events.clear()
            parser.close()
        except ijson.JSONError:
            return offset  # the send or close that raised had not yet advanced `offset`
    return offset


def _error_at(path: Path, offset: int, where: str | None, problem: str) -> DataFormatError:
    line, column = line_column(path, offset)
    location = f"line {line}, column {column}, byte offset {offset}"
    if where is not None:
        location = f"{where}, {location}"
    return DataFormatError(f"{path}, {location}: {problem}. {_FIX}")


def line_column(path: str | os.PathLike, offset: int) -> tuple[int, int]:
    """Return the 1-based line and column (in characters) of a byte offset of a UTF-8 file."""
    line = 1
    tail_chars = 0
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    with open(path, "rb") as handle:
        remaining = offset
        while remaining > 0:
            block = handle.read(min(1 << 20, remaining))
            if not block:
                break
            remaining -= len(block)
            newlines = block.count(b"\n")
            if newlines:
                line += newlines
                block = block[block.rfind(b"\n") + 1 :]
                decoder.reset()
                tail_chars = 0
            tail_chars += len(decoder.decode(block))
    return line, tail_chars + 1

"""Incremental reader for large JSON files, one array element at a time.

Visual Genome's objects.json and attributes.json are top-level arrays of about 108k image records
(GB in total), and COCO's instances JSON is one object whose "annotations" array contains most of the data.
The reader keeps one buffer of about `chunk_chars` characters plus the element being decoded, and
decodes each element with the standard library's `json.JSONDecoder.raw_decode`, so no extra
package is needed. Errors name the file, the line and column, and the array element.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tqdm.auto import tqdm

from mack.data import DataFormatError

CHUNK_CHARS = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Characters that end a number or a literal. A value with none of them after it may continue.
_DELIMITER = re.compile(r"[ \t\n\r,:\[\]{}\"]")
_DECODER = json.JSONDecoder()
_FIX = "The file is not valid JSON: re-download or re-export it (a truncated copy fails this way)"


@dataclass(frozen=True)
class JsonItem:
    """One decoded value and where it starts in the file."""

    key: str | None  # member of the top-level object, None for a top-level array
    index: int | None  # position in its array, None for a member that is not streamed
    value: Any
    line: int  # 1-based
    column: int  # 1-based, in characters

    @property
    def where(self) -> str:
        """Location for error messages, e.g. 'line 1, column 8031, "annotations"[12]'."""
        parts = [f"line {self.line}, column {self.column}"]
        if self.key is not None and self.index is not None:
            parts.append(f'"{self.key}"[{self.index}]')
        elif self.index is not None:
            parts.append(f"record {self.index}")
        elif self.key is not None:
            parts.append(f'"{self.key}"')
        return ", ".join(parts)


class _Buffer:
    """Text buffer over a binary UTF-8 file that tracks the line and column of any buffer index."""

    def __init__(self, handle: BinaryIO, path: Path, chunk_chars: int, progress: tqdm):
        self.handle = handle
        self.path = path
        self.chunk_chars = chunk_chars
        self.progress = progress
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.bytes_read = 0
        self.text = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line number at buffer index `counted`
        self.counted = 0
        self.line_start = 0  # buffer index where that line starts (negative after compaction)

    def fill(self, min_chars: int = 0) -> bool:
        """Append at least one chunk to the buffer; return False at end of file."""
        if self.eof:
            return False
        self._compact()
        data = self.handle.read(max(self.chunk_chars, min_chars))
        self.progress.update(len(data))
        try:
            self.text += self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as error:
            where = f"byte offset {self.bytes_read + error.start}"
            problem = f"invalid UTF-8 ({error.reason})"
            raise DataFormatError(f"{self.path}, {where}: {problem}. {_FIX}") from error
        self.bytes_read += len(data)
        if not data:
            self.eof = True
        return bool(data)

    def _compact(self) -> None:
        if self.pos < self.chunk_chars:
            return
        self._count_lines(self.pos)
        self.text = self.text[self.pos :]
        self.counted -= self.pos
        self.line_start -= self.pos
        self.pos = 0

    def _count_lines(self, index: int) -> None:
        if index <= self.counted:
            return
        newlines = self.text.count("\n", self.counted, index)
        if newlines:
            self.line += newlines
            self.line_start = self.text.rfind("\n", self.counted, index) + 1
        self.counted = index

    def location(self, index: int) -> tuple[int, int]:
        """Return (line, column), both 1-based, of a buffer index at or after earlier requests."""
        self._count_lines(index)
        return self.line, index - self.line_start + 1

    def peek(self) -> str | None:
        """Skip whitespace and return the next character, or None at end of file."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None

    def decode(self) -> Any:
        """Decode the JSON value that starts at the current position and move past it."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as error:
                if self._maybe_cut(error) and self.fill(len(self.text) - self.pos):
                    continue
                raise self._decode_error(error) from error
            # A number or literal cut at the buffer end ("-0" of "-0.5") decodes without error.
            if not _DELIMITER.search(self.text, end) and self.fill():
                continue
            self.pos = end
            return value

    def _runs_to_end(self, error: json.JSONDecodeError) -> bool:
        """Return whether the error may come from the buffer ending inside a value, not from bad JSON."""
        unterminated = error.msg.startswith("Unterminated string")
        return unterminated or not _DELIMITER.search(self.text, error.pos)

    def _maybe_cut(self, error: json.JSONDecodeError) -> bool:
        return not self.eof and self._runs_to_end(error)

    def _decode_error(self, error: json.JSONDecodeError) -> DataFormatError:
        problem = f"invalid JSON ({error.msg})"
        if self.eof and self._runs_to_end(error):
            problem = f"the file ends in the middle of a value ({error.msg})"
        return self.error_at(error.pos, problem, _FIX)

    def error_at(self, index: int, problem: str, fix: str = _FIX) -> DataFormatError:
        line, column = self.location(index)
        return DataFormatError(f"{self.path}, line {line}, column {column}: {problem}. {fix}")

    def expect(self, char: str, context: str) -> None:
        found = self.peek()
        if found != char:
            shown = "end of file" if found is None else repr(found)
            raise self.error_at(self.pos, f"expected {char!r} {context}, found {shown}")
        self.pos += 1


def _iter_array(buffer: _Buffer, key: str | None) -> Iterator[JsonItem]:
    """Yield the elements of the array that starts at the buffer position."""
    context = "at the start of the top-level array" if key is None else f'to open "{key}"'
    buffer.expect("[", context)
    if buffer.peek() == "]":
        buffer.pos += 1
        return

    index = 0
    while True:
        if buffer.peek() is None:
            raise buffer.error_at(buffer.pos, f"the file ends before element {index}")
        line, column = buffer.location(buffer.pos)
        value = buffer.decode()
        yield JsonItem(key, index, value, line, column)

        separator = buffer.peek()
        if separator == ",":
            buffer.pos += 1
            index += 1
            continue
        if separator == "]":
            buffer.pos += 1
            return
        shown = "end of file" if separator is None else repr(separator)
        raise buffer.error_at(
            buffer.pos, f"expected ',' or ']' after element {index}, found {shown}"
        )


def _iter_object(buffer: _Buffer, stream_keys: Collection[str]) -> Iterator[JsonItem]:
    """Yield the members of the object at the buffer position, streaming arrays under stream_keys."""
    buffer.expect("{", "at the start of the top-level object")
    if buffer.peek() == "}":
        buffer.pos += 1
        return

    while True:
        if buffer.peek() != '"':
            raise buffer.error_at(buffer.pos, "expected a member name in double quotes")
        key = buffer.decode()
        buffer.expect(":", f'after the member name "{key}"')
        if key in stream_keys and buffer.peek() == "[":
            yield from _iter_array(buffer, key)
        else:
            buffer.peek()
            line, column = buffer.location(buffer.pos)
            yield JsonItem(key, None, buffer.decode(), line, column)

        separator = buffer.peek()
        if separator == ",":
            buffer.pos += 1
            continue
        if separator == "}":
            buffer.pos += 1
            return
        shown = "end of file" if separator is None else repr(separator)
        raise buffer.error_at(buffer.pos, f'expected "," or "}}" after "{key}", found {shown}')


def _stream(
    path: str | os.PathLike,
    top: str,
    stream_keys: Collection[str],
    progress: bool,
    chunk_chars: int,
) -> Iterator[JsonItem]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found. Check the path or download the file.")
    with (
        open(path, "rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=path.name,
            disable=not progress,
        ) as bar,
    ):
        buffer = _Buffer(handle, path, chunk_chars, bar)
        first = buffer.peek()
        if first is None:
            raise buffer.error_at(buffer.pos, "the file is empty", "Re-download or re-export it")
        if top == "records" and first == "[":
            yield from _iter_array(buffer, None)
        elif top == "records" and first == "{":
            line, column = buffer.location(buffer.pos)
            yield JsonItem(None, None, buffer.decode(), line, column)
        elif top == "object":
            yield from _iter_object(buffer, stream_keys)
        else:
            raise buffer.error_at(buffer.pos, f"expected '[' or '{{', found {first!r}")

        if buffer.peek() is not None:
            raise buffer.error_at(buffer.pos, "extra data after the top-level value")


def iter_json_records(
    path: str | os.PathLike, *, progress: bool = False, chunk_chars: int = CHUNK_CHARS
) -> Iterator[JsonItem]:
    """Yield the elements of a top-level JSON array one at a time.

    A file whose top level is an object (a single Visual Genome record) yields that object once,
    with index None. Raises DataFormatError with the line and column of malformed JSON.
    """
    return _stream(path, "records", (), progress, chunk_chars)


def iter_json_members(
    path: str | os.PathLike,
    stream_keys: Collection[str],
    *,
    progress: bool = False,
    chunk_chars: int = CHUNK_CHARS,
) -> Iterator[JsonItem]:
    """Yield the members of a top-level JSON object, with arrays under `stream_keys` element by element.

    A streamed element has `key` and `index` set; any other member is yielded whole with index None.
    """
    return _stream(path, "object", stream_keys, progress, chunk_chars)

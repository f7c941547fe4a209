"""Follows the frame structure of a zstd stream (RFC 8878, section 3) to tell whether it ended
cleanly.

zstandard's stream reader returns a short, clean-looking end when its input stops inside a
frame, so a truncated layer would be applied without complaint when no diffID is given. This
walker reads only headers (frame headers, block headers, skippable-frame sizes) and skips over
block contents by arithmetic, so it costs next to nothing beside the decompression itself.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ZstdFrameWalker"]

_FRAME_MAGIC: Final = 0xFD2FB528
_SKIPPABLE_LOW: Final = 0x184D2A50
_SKIPPABLE_HIGH: Final = 0x184D2A5F
_DICT_ID_SIZES: Final = (0, 1, 2, 4)
_CONTENT_SIZE_SIZES: Final = (0, 2, 4, 8)
_RLE_BLOCK: Final = 1
_RESERVED_BLOCK: Final = 3


class ZstdFrameWalker:
    """Fed every compressed byte in order; :meth:`finish` says what is wrong, if anything."""

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4
        self._field = bytearray()
        self._skip = 0
        self._checksum = False
        self._last_block = False
        self._frames = 0
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        position, end = 0, len(data)
        while position < end and self._error is None:
            if self._skip:
                step = min(self._skip, end - position)
                position += step
                self._skip -= step
                if not self._skip:
                    self._after_skip()
                continue
            take = min(self._need - len(self._field), end - position)
            self._field += data[position : position + take]
            position += take
            if len(self._field) == self._need:
                field = bytes(self._field)
                self._field.clear()
                self._on_field(field)

    def finish(self) -> str | None:
        if self._error is not None:
            return self._error
        if self._state != "magic" or self._field or self._skip:
            return "the stream is truncated (it ends inside a frame)"
        if not self._frames:
            return "the stream has no zstd frame"
        return None

    def _expect(self, state: str, size: int) -> None:
        self._state, self._need = state, size

    def _on_field(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if value == _FRAME_MAGIC:
                self._expect("frame-header", 1)
            elif _SKIPPABLE_LOW <= value <= _SKIPPABLE_HIGH:
                self._expect("skippable-size", 4)
            else:
                self._error = f"unknown frame magic number {value:#010x}"
        elif self._state == "skippable-size":
            self._state = "skippable"
            self._skip = value
            if not value:
                self._after_skip()
        elif self._state == "frame-header":
            single_segment = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            content_size = _CONTENT_SIZE_SIZES[value >> 6] or (1 if single_segment else 0)
            rest = (0 if single_segment else 1) + _DICT_ID_SIZES[value & 3] + content_size
            self._expect("frame-header-rest", rest) if rest else self._expect("block-header", 3)
        elif self._state == "frame-header-rest":
            self._expect("block-header", 3)
        elif self._state == "block-header":
            self._on_block_header(value)
        elif self._state == "checksum":
            self._end_frame()

    def _on_block_header(self, value: int) -> None:
        self._last_block = bool(value & 1)
        block_type = (value >> 1) & 3
        if block_type == _RESERVED_BLOCK:
            self._error = "a block has the reserved block type"
            return
        self._state = "block"
        self._skip = 1 if block_type == _RLE_BLOCK else value >> 3
        if not self._skip:
            self._after_skip()

    def _after_skip(self) -> None:
        if self._state == "skippable":
            self._expect("magic", 4)
        elif not self._last_block:
            self._expect("block-header", 3)
        elif self._checksum:
            self._expect("checksum", 4)
        else:
            self._end_frame()

    def _end_frame(self) -> None:
        self._frames += 1
        self._expect("magic", 4)

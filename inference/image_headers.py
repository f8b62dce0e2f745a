"""What an encoded image claims to be, read from its first bytes: format, width, height.

Read before anything is decoded — on the api, so that a request is refused before it is queued, and on
the worker again before it allocates — in microseconds: a PNG's size is in its first chunk (IHDR), a
JPEG's in its frame header (SOFn), reached by hopping over the segments before it by their lengths.
The walk must find the frame header libjpeg decodes: where libjpeg would skip bytes looking for a marker
(anything but FF before one, a stuffed zero FF 00), the JPEG is refused, since libjpeg could find another
frame header there than the one checked (a 600-byte JPEG read as 8x8 decoding to 20,000x20,000).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Segments a JPEG may have before its frame header (APPn, DQT, DHT, COM, ...): real files have a few tens;
# a file made of millions of empty segments would cost the api seconds to walk.
MAX_JPEG_SEGMENTS = 512
# Scans (SOS markers) a JPEG may have: each costs libjpeg a pass over every block of the image, whatever its
# bytes (a repeated progressive scan of 4096x4096 takes 56 bytes and 17 ms to decode); libjpeg's progressive
# JPEGs have 10 or fewer. Counted over the whole file (FF DA cannot occur in entropy-coded data; in a
# metadata segment it may, and is counted too), at C speed: about 0.1 ms a MB.
MAX_JPEG_SCANS = 100
# SOF0..SOF15 are frame headers, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..7: no length follows


class ImageHeaderError(ValueError):
    """The bytes are not a JPEG or PNG whose size can be read."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "JPEG" or "PNG"
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def size_text(self) -> str:
        return f"{self.width}x{self.height}"


def read_header(data: bytes | memoryview) -> ImageHeader:
    """The format and size an encoded image declares; ImageHeaderError if it is neither JPEG nor PNG,
    or its header is cut short or malformed."""
    if bytes(data[:8]) == PNG_SIGNATURE:
        return _png(data)
    if bytes(data[:3]) == JPEG_SIGNATURE:
        header = _jpeg(data)
        scans = bytes(data).count(b"\xff\xda") if isinstance(data, memoryview) else data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageHeaderError(f"JPEG of {scans} scans; at most {MAX_JPEG_SCANS} are decoded")
        return header
    raise ImageHeaderError(f"neither JPEG nor PNG (starts with {bytes(data[:8]).hex() or 'nothing'})")


def _png(data: bytes | memoryview) -> ImageHeader:
    """The first chunk of a PNG is its IHDR: length 13, width and height as 4-byte big-endian numbers."""
    if len(data) < 33:
        raise ImageHeaderError("PNG cut short before the end of its header (IHDR)")
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    if kind != b"IHDR" or length != 13:
        raise ImageHeaderError("PNG whose first chunk is not a header (IHDR)")
    return ImageHeader("PNG", width, height)


def _jpeg(data: bytes | memoryview) -> ImageHeader:
    position = 2  # at the marker after SOI
    for _ in range(MAX_JPEG_SEGMENTS):
        if position < len(data) and data[position] != 0xFF:
            raise ImageHeaderError("JPEG with bytes where a segment marker should be")
        while position < len(data) and data[position] == 0xFF:  # a marker may be preceded by fill bytes
            position += 1
        if position + 3 > len(data):
            break
        marker = data[position]
        position += 1
        if marker == 0x00:
            raise ImageHeaderError("JPEG with a stuffed zero (FF 00) where a segment marker should be")
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageHeaderError("JPEG without a frame header (SOF) before its image data")
        (length,) = struct.unpack(">H", data[position : position + 2])
        if length < 2:
            raise ImageHeaderError(f"JPEG segment of impossible length {length}")
        if marker in _JPEG_FRAMES:
            if length < 8 or position + 7 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 3 : position + 7])
            return ImageHeader("JPEG", width, height)
        position += length
    else:
        raise ImageHeaderError(f"JPEG with more than {MAX_JPEG_SEGMENTS} segments before its frame header (SOF)")
    raise ImageHeaderError("JPEG cut short before its frame header (SOF)")

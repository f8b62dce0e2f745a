"""Images for tests of image inputs: scikit-learn's sample photographs re-encoded, and hostile files.

Decoded and encoded with OpenCV, the library the workers decode with, so that a test can compare what the
server decoded with what a client decodes from the same bytes.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images


@functools.cache
def photographs() -> dict[str, np.ndarray]:
    """china.jpg (427x640) and flower.jpg, as BGR arrays."""
    samples = load_sample_images()
    return {
        name.rsplit("/", 1)[-1].removesuffix(".jpg"): cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        for name, image in zip(samples.filenames, samples.images, strict=True)
    }


def jpeg(image: np.ndarray, width: int | None = None, height: int | None = None, quality: int = 90) -> bytes:
    """`image` (BGR or gray), resized to `width` x `height` if given, as a JPEG."""
    return _encode(".jpg", _sized(image, width, height), [cv2.IMWRITE_JPEG_QUALITY, quality])


def png(image: np.ndarray, width: int | None = None, height: int | None = None) -> bytes:
    return _encode(".png", _sized(image, width, height), [])


def _sized(image: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    if width is None or height is None:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _encode(extension: str, image: np.ndarray, parameters: list[int]) -> bytes:
    ok, encoded = cv2.imencode(extension, image, parameters)
    assert ok
    return encoded.tobytes()


def decoded(data: bytes, gray: bool = False) -> np.ndarray:
    """What a client decodes from `data` with OpenCV: BGR (or gray) pixels as stored."""
    flags = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)


def decoded_by_pillow(data: bytes) -> np.ndarray:
    """What another decoder (Pillow) makes of `data`: BGR, 8 bits, no alpha."""
    image = Image.open(io.BytesIO(data))
    if image.mode.startswith("I;16"):
        pixels = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels[..., ::-1]
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def resized(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """As the server resizes an image to a model's fixed size (bilinear, as OVMS)."""
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)


def nchw(pixels: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """One decoded BGR image as a batch of one NCHW tensor, as a client would send it."""
    return pixels.transpose(2, 0, 1)[None].astype(dtype)


def pillow(image: np.ndarray, mode: str, fmt: str, **options: object) -> bytes:
    """`image` (BGR) converted by Pillow to `mode` ("CMYK", "P", "RGBA", ...) and saved as `fmt`."""
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).convert(mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def png_sixteen_bits(image: np.ndarray) -> bytes:
    return png(image.astype(np.uint16) * 257)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(1024)))
        + png_chunk(b"IEND", b"")
    )


def png_with_chunk(data: bytes, chunk: bytes) -> bytes:
    """A PNG with `chunk` (whole, or only a length claim) inserted after its header."""
    after_header = 8 + 25
    return data[:after_header] + chunk + data[after_header:]


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims another size than its data holds."""
    frame = data.index(b"\xff\xc0")
    return data[: frame + 5] + struct.pack(">HH", height, width) + data[frame + 9 :]


def solid(blue: int, green: int, red: int, width: int = 48, height: int = 32) -> np.ndarray:
    """A BGR image of one colour."""
    return np.tile(np.array([blue, green, red], np.uint8), (height, width, 1))


def _jpeg_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """A JPEG's segments after SOI up to its first scan (each with its marker and length), and the rest."""
    position, segments = 2, []
    while data[position + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        segments.append(data[position : position + 2 + length])
        position += 2 + length
    return segments, data[position:]


def jpeg_hiding_its_frame(data: bytes, width: int, height: int) -> bytes:
    """A JPEG that libjpeg decodes at `width` x `height` while a reader taking FF 00 for a segment sees 8x8:
    libjpeg skips FF 00 (a stuffed zero) and the bytes after it up to the next FF, the real frame header;
    the 'segment' FF 00's two bytes after it claim hops past that, onto an 8x8 frame header kept in a comment."""
    segments, rest = _jpeg_segments(data)
    frame = next(segment for segment in segments if segment[1] == 0xC0)
    real = b"".join(
        segment[:5] + struct.pack(">HH", height, width) + segment[9:] if segment is frame else segment
        for segment in segments
    )
    comment = b"\xff\xfe" + struct.pack(">H", len(frame) + 2) + frame[:5] + struct.pack(">HH", 8, 8) + frame[9:]
    hop = 2 + 1 + len(real) + 4  # from the 'length' to the frame header inside the comment
    return b"\xff\xd8\xff\x00" + struct.pack(">H", hop) + b"\x00" + real + comment + rest


def jpeg_of_many_scans(width: int, height: int, scans: int) -> bytes:
    """A black progressive JPEG whose last scan is repeated until it has `scans`: each costs libjpeg a pass
    over every block, a few bytes each."""
    segments, rest = _jpeg_segments(pillow(np.zeros((height, width), np.uint8), "L", "JPEG", progressive=True))
    position, parts = 0, []
    while rest[position + 1] != 0xD9:  # split the scans: each is its segment, its entropy-coded data
        end = rest.index(b"\xff", position + 2 + struct.unpack(">H", rest[position + 2 : position + 4])[0])
        while rest[end + 1] == 0 or 0xD0 <= rest[end + 1] <= 0xD7:
            end = rest.index(b"\xff", end + 2)
        parts.append(rest[position:end])
        position = end
    header_and_scans = b"".join(segments) + b"".join(parts)
    repeated = header_and_scans + parts[-1] * (scans - sum(part[1] == 0xDA for part in parts))
    return b"\xff\xd8" + repeated + b"\xff\xd9"

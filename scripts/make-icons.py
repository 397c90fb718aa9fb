#!/usr/bin/env python3
"""Makes the Windows (.ico) and macOS (.icns) app icons from the PNGs in icons/, standard library
only: both formats may hold PNG images as they are (Windows Vista+, macOS 10.7+).

    python3 scripts/make-icons.py      # writes icons/icon.ico and icons/icon.icns
"""
import struct
from pathlib import Path

ICONS = Path(__file__).resolve().parent.parent / "icons"
# size in pixels -> PNG file
PNGS = {32: "32x32.png", 128: "128x128.png", 256: "128x128@2x.png", 512: "icon.png"}
# ICNS PNG types: (type, pixels); @2x types hold twice the pixels of their point size.
ICNS_TYPES = [(b"icp5", 32), (b"ic07", 128), (b"ic08", 256), (b"ic13", 256),
              (b"ic09", 512), (b"ic14", 512)]


def png(size: int) -> bytes:
    data = (ICONS / PNGS[size]).read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and (width, height) == (size, size), PNGS[size]
    return data


def ico() -> bytes:
    sizes = [32, 128, 256]
    images = [png(size) for size in sizes]
    out = struct.pack("<HHH", 0, 1, len(images))
    offset = 6 + 16 * len(images)
    for size, image in zip(sizes, images):
        side = 0 if size >= 256 else size  # 0 means 256 in an ICO directory
        out += struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(image), offset)
        offset += len(image)
    return out + b"".join(images)


def icns() -> bytes:
    body = b"".join(kind + struct.pack(">I", 8 + len(png(size))) + png(size)
                    for kind, size in ICNS_TYPES)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


if __name__ == "__main__":
    (ICONS / "icon.ico").write_bytes(ico())
    (ICONS / "icon.icns").write_bytes(icns())
    print("wrote icons/icon.ico and icons/icon.icns")

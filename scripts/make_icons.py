"""Render assets/icon.svg into the icon sizes each platform needs.

    .venv/bin/python scripts/make_icons.py

Writes assets/icons/switchman-{16,32,48,64,128,256,512}.png (Linux hicolor
theme, the .desktop entry, the tray), assets/switchman.ico (Windows: the
executable's icon, 16-256 px PNG entries) and assets/switchman.icns (macOS).
Qt renders the SVG (QSvgRenderer) so no other image library is needed; the ICO
and ICNS containers are written by hand (both are a small index + PNG blobs).
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SIZES = (16, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 32, 48, 64, 128, 256)  # 256 is the largest an ICO entry holds
# ICNS PNG entry types by pixel size
ICNS_TYPES = {16: b"icp4", 32: b"icp5", 64: b"icp6", 128: b"ic07", 256: b"ic08", 512: b"ic09"}


def render(renderer: QSvgRenderer, size: int) -> bytes:
    img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(p)
    p.end()
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    if not img.save(buf, "PNG"):
        raise RuntimeError(f"could not encode the {size} px PNG")
    return bytes(data.data())


def ico(pngs: dict[int, bytes]) -> bytes:
    sizes = [s for s in ICO_SIZES if s in pngs]
    header = struct.pack("<HHH", 0, 1, len(sizes))
    offset = len(header) + 16 * len(sizes)
    entries, blobs = b"", b""
    for s in sizes:
        blob = pngs[s]
        dim = 0 if s >= 256 else s  # 0 means 256
        entries += struct.pack("<BBBBHHII", dim, dim, 0, 0, 1, 32, len(blob), offset)
        blobs += blob
        offset += len(blob)
    return header + entries + blobs


def icns(pngs: dict[int, bytes]) -> bytes:
    body = b"".join(kind + struct.pack(">I", 8 + len(pngs[s])) + pngs[s]
                    for s, kind in ICNS_TYPES.items() if s in pngs)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def main() -> int:
    _app = QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(ASSETS / "icon.svg"))
    if not renderer.isValid():
        print("assets/icon.svg could not be read", file=sys.stderr)
        return 1
    out = ASSETS / "icons"
    out.mkdir(exist_ok=True)
    pngs = {s: render(renderer, s) for s in SIZES}
    for s, blob in pngs.items():
        (out / f"switchman-{s}.png").write_bytes(blob)
    (ASSETS / "switchman.ico").write_bytes(ico(pngs))
    (ASSETS / "switchman.icns").write_bytes(icns(pngs))
    total = sum(len(b) for b in pngs.values())
    print(f"wrote {len(pngs)} PNGs ({total // 1024} KB) to {out.relative_to(ROOT)}, "
          "assets/switchman.ico, assets/switchman.icns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

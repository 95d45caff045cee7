"""A horizontal bar chart as PNG bytes, standard library only (zlib): no matplotlib needed.

Text uses a built-in 5x7 bitmap font (upper case, digits and a few signs; rows split by ``|``), drawn at 2x.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

_GLYPHS = {
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#",
    "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.",
    "D": "###..|#..#.|#...#|#...#|#...#|#..#.|###..",
    "E": "#####|#....|#....|####.|#....|#....|#####",
    "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####",
    "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.",
    "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",
    "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",
    "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.",
    "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",
    "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.",
    "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.",
    "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",
    "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    " ": ".....|.....|.....|.....|.....|.....|.....",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "%": "##...|##..#|...#.|..#..|.#...|#..##|...##",
    "-": ".....|.....|.....|#####|.....|.....|.....",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "=": ".....|.....|#####|.....|#####|.....|.....",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
}
_SCALE = 2
_CHAR_W = 6 * _SCALE
_CHAR_H = 7 * _SCALE

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (30, 30, 30)
GREY: Color = (200, 200, 200)
RED: Color = (200, 40, 40)
PALETTE: tuple[Color, ...] = ((59, 91, 219), (240, 140, 0), (240, 180, 60), (100, 160, 90))


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row

    def text(self, x: int, y: int, text: str, color: Color = BLACK) -> int:
        for ch in text.upper():
            glyph = _GLYPHS.get(ch, _GLYPHS[" "]).replace("|", "")
            for i, bit in enumerate(glyph):
                if bit == "#":
                    gx, gy = i % 5, i // 5
                    self.rect(
                        x + gx * _SCALE, y + gy * _SCALE, x + (gx + 1) * _SCALE, y + (gy + 1) * _SCALE, color
                    )
            x += _CHAR_W
        return x

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
            )

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    ideal: float | None = None,
    title: str = "",
    ideal_label: str = "IDEAL",
    unit: str = "ROWS/S",
) -> bytes:
    """Horizontal bars with value labels and an optional dashed reference line; returns PNG bytes."""
    label_w = max(len(label) for label, _ in bars) * _CHAR_W + 20
    plot_w = 560
    value_w = 220
    bar_h, gap, top = 30, 18, 60
    width = label_w + plot_w + value_w
    height = top + len(bars) * (bar_h + gap) + 40
    top_value = max([v for _, v in bars] + ([ideal] if ideal else [])) * 1.05
    canvas = Canvas(width, height)
    canvas.text(10, 12, title)
    x0 = label_w

    def xpos(v: float) -> int:
        return x0 + int(plot_w * v / top_value)

    canvas.rect(x0, top - 10, x0 + 2, height - 30, BLACK)
    if ideal:
        xi = xpos(ideal)
        for y in range(top - 10, height - 30, 10):
            canvas.rect(xi, y, xi + 2, y + 6, RED)
        canvas.text(max(x0, xi - len(ideal_label) * _CHAR_W // 2), height - 24, ideal_label, RED)
    for i, (label, value) in enumerate(bars):
        y = top + i * (bar_h + gap)
        canvas.text(10, y + (bar_h - _CHAR_H) // 2, label)
        canvas.rect(x0 + 2, y, max(x0 + 3, xpos(value)), y + bar_h, PALETTE[i % len(PALETTE)])
        text = f"{value:.0f} {unit}" + (f" ({value / ideal * 100:.0f}%)" if ideal else "")
        tx, ty = xpos(value) + 8, y + (bar_h - _CHAR_H) // 2
        canvas.rect(tx - 2, ty - 2, tx + len(text) * _CHAR_W + 2, ty + _CHAR_H + 2, WHITE)
        canvas.text(tx, ty, text)
    return canvas.png()

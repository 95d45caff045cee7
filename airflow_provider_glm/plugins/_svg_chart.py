"""A stacked bar chart as inline SVG, drawn on the server: no JavaScript, no CDN, no network.

Example::

    svg = stacked_bars(["2026-11-01", "2026-11-02"], {"glm-4.5": [1.5, 2.0], "glm-4.6": [0.5, 0.0]},
                       unit="USD")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["OTHER", "PALETTE", "nice_ceiling", "stacked_bars"]

OTHER = "other"
"""The name of the series that gathers everything past the largest ones; drawn grey."""

PALETTE = ("#017cee", "#00ad46", "#f0a30a", "#e43921", "#8b5cf6", "#0891b2", "#db2777", "#65a30d",
           "#9ca3af")
"""Series colours in order; the last, grey, is for :data:`OTHER`."""


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= ``value`` (1 for 0 or less)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return float(step * power)
    return float(10 * power)


def stacked_bars(days: Sequence[str], series: Mapping[str, Sequence[float]], *, unit: str = "",
                 width: int = 960, height: int = 280, title: str = "") -> str:
    """Render one bar per day, each stacked from the series in the order given.

    :param days: the x labels, ``YYYY-MM-DD``.
    :param series: name -> one value per day (same length as ``days``); drawn bottom-up in this order.
    :param unit: shown on the y axis and in the tooltips (e.g. the currency).
    :param width: SVG width in user units (the SVG scales to its container).
    :param height: SVG height.
    :param title: accessible name of the chart.
    :return: an ``<svg>`` element; every bar segment has a ``<title>`` tooltip.
    """
    for name, values in series.items():
        if len(values) != len(days):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(days)} days")
    left, right, top, bottom = 64, 12, 12, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    y_max = nice_ceiling(max(totals, default=0.0))
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.72, 1.0)
    parts = [
        f'<svg class="glm-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">'
    ]
    for tick in range(5):
        value = y_max * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                     f'{escape(_short(value))}</text>')
    if unit:
        parts.append(f'<text x="12" y="{top + plot_h / 2:.1f}" class="unit" '
                     f'transform="rotate(-90 12 {top + plot_h / 2:.1f})" text-anchor="middle">{escape(unit)}</text>')
    label_every = max(1, math.ceil(len(days) / 12))
    for i, day in enumerate(days):
        x = left + slot * i + (slot - bar_w) / 2
        base = float(top + plot_h)
        for colour, (name, values) in zip(_colours(list(series)), series.items(), strict=True):
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / y_max
            base -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}">'
                f'<title>{escape(day)} · {escape(name)}: {escape(_full(value, unit))}</title></rect>'
            )
        if i % label_every == 0:
            parts.append(f'<text x="{left + slot * i + slot / 2:.1f}" y="{top + plot_h + 16}" '
                         f'text-anchor="middle" class="tick">{escape(day[5:])}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" class="axis"/>')
    legend_x = left
    for colour, name in zip(_colours(list(series)), series, strict=True):
        parts.append(f'<rect x="{legend_x}" y="{height - 18}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{height - 9}" class="legend">{escape(name)}</text>')
        legend_x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _colours(names: Sequence[str]) -> list[str]:
    named = PALETTE[:-1]
    return [PALETTE[-1] if name == OTHER else named[i % len(named)] for i, name in enumerate(names)]


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _full(value: float, unit: str) -> str:
    return f"{value:,.4f} {unit}".strip()

"""Inline SVG bar charts for the HTML report: drawn here, so the file needs no script and no network."""

from __future__ import annotations

from html import escape

COLORS = ("#3b6ea8", "#c0504d", "#6a9f58", "#8e6bb0", "#d08b2c", "#4aa3a2")


def bar_chart(title: str, groups: list[str], series: dict[str, list[float | None]], width: int = 760) -> str:
    """Grouped vertical bars, values in [0, 1] shown as percentages; None draws no bar ("not run")."""
    height, top, bottom, left = 260, 34, 70, 44
    plot_h = height - top - bottom
    n_series = max(len(series), 1)
    slot = (width - left - 10) / max(len(groups), 1)
    bar_w = max(min(slot * 0.8 / n_series, 28), 3)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for pct in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - pct / 100)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{pct}%</text>')
    for gi, group in enumerate(groups):
        x0 = left + gi * slot + (slot - bar_w * n_series) / 2
        for si, (name, values) in enumerate(series.items()):
            value = values[gi]
            if value is None:
                continue
            h = plot_h * max(0.0, min(1.0, value))
            x, y = x0 + si * bar_w, top + plot_h - h
            color = COLORS[si % len(COLORS)]
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{max(h, 0.5):.1f}" fill="{color}">'
                f"<title>{escape(group)} · {escape(name)}: {100 * value:.0f}%</title></rect>"
            )
        cx = left + gi * slot + slot / 2
        parts.append(
            f'<text x="{cx:.1f}" y="{top + plot_h + 14}" font-size="11" text-anchor="end" '
            f'transform="rotate(-30 {cx:.1f} {top + plot_h + 14})">{escape(group)}</text>'
        )
    for si, name in enumerate(series):
        x = left + si * 150
        parts.append(
            f'<rect x="{x}" y="{height - 16}" width="10" height="10" fill="{COLORS[si % len(COLORS)]}"/>'
        )
        parts.append(f'<text x="{x + 14}" y="{height - 7}" font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)

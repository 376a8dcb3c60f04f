"""Figures, drawn with matplotlib (the `[plots]` extra): `evaluate`'s distribution plot and the
label-efficiency curve of `bench --labels`. Each returns PNG bytes, or None when matplotlib is
not installed (the numbers are written anyway)."""

from __future__ import annotations

import io

import numpy as np

from sam2pal.io.overlays import structure_color


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(plt, figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def distribution_plot(structures: list[str], values: dict[str, dict[str, list[float]]],
                      titles: dict[str, str]) -> bytes | None:
    """One panel per metric (`values[metric][structure]`): a box (quartiles, median, whiskers to
    min and max) per structure with its values as dots in the structure's overlay colour."""
    plt = _pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(1, len(titles), figsize=(1.2 + 0.9 * len(structures) * len(titles), 3.6),
                                dpi=100, squeeze=False)
    positions = np.arange(len(structures))
    for axis, (metric, title) in zip(axes[0], titles.items()):
        data = [values[metric][name] for name in structures]
        axis.boxplot(data, positions=positions, widths=0.5, whis=(0, 100), showfliers=False,
                     medianprops={"color": "black"})
        for index, points in enumerate(data):
            spread = ((np.arange(len(points)) * 0.618034) % 1 - 0.5) * 0.4  # spread, not random: reproducible
            colour = [c / 255 for c in structure_color(index)]
            axis.scatter(positions[index] + spread, points, s=30, color=[colour], edgecolors="none", zorder=3)
        axis.set_xticks(positions, structures, rotation=30, ha="right", fontsize=8)
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(title, fontsize=9)
        axis.grid(axis="y", color="0.9")
    figure.tight_layout()
    return _png(plt, figure)


def label_curve(curve: dict[str, dict], counts: tuple[int, ...]) -> bytes | None:
    """Held-out IoU against labelled specimens per domain, palindrome fine-tuning as a dashed line."""
    plt = _pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for domain, row in curve.items():
        shown = sorted(int(n) for n in row["supervised"])
        line, = axis.plot(shown, [row["supervised"][str(n)] for n in shown], marker="o", label=f"{domain}: supervised")
        axis.axhline(row["palindrome"], color=line.get_color(), linestyle="--", label=f"{domain}: palindrome")
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xticks(counts, [str(n) for n in counts])
    axis.set_xlabel("labelled specimens")
    axis.set_ylabel("held-out IoU (mean over structures)")
    axis.set_title("label efficiency (synthetic, trained on synthetic specimens only)", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return _png(plt, figure)

"""What every fedstep plot shares: matplotlib without a display, whole rounds on the x axis, and files
saved with nothing cut off (legends beside the axes included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def round_axis(ax: Any) -> None:
    """Label the x axis "round" and tick whole rounds only (never 1.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig: Any, path: Path) -> None:
    """Write `fig` to `path` with its bounding box around everything drawn, then free it."""
    fig.savefig(path, bbox_inches="tight")
    pyplot().close(fig)

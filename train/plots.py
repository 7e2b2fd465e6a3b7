"""PNG plots of learned importance and masks (matplotlib, Agg backend; optional dependency)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from train import st_io  # noqa: E402


def _save(fig, path) -> None:
    """PNG to NAME.tmp, then a rename (st_io.write_atomic): no partial plot at `path`."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    st_io.write_atomic(path, buf.getvalue())


def plot_mask(alpha: torch.Tensor, kept: torch.Tensor, path, title: str = "") -> None:
    """alpha: stage-1 factors [L, H, D]; kept: 0/1 mask [L, H, D]. Three panels: mean factor
    per (layer, head), kept channels per (layer, head), histogram of kept counts."""
    a = alpha.float().numpy()
    k = kept.float().numpy().sum(-1)
    L, H, D = a.shape
    fig, ax = plt.subplots(1, 3, figsize=(13, 0.18 * L + 2.5))
    im = ax[0].imshow(a.mean(-1), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax[0].set(title="stage-1 importance: mean alpha", xlabel="kv head", ylabel="layer")
    fig.colorbar(im, ax=ax[0])
    im = ax[1].imshow(k, aspect="auto", cmap="magma", vmin=0, vmax=D)
    ax[1].set(title="kept K channels", xlabel="kv head", ylabel="layer")
    for li in range(L):
        for hi in range(H):
            ax[1].text(hi, li, str(int(k[li, hi])), ha="center", va="center", fontsize=6,
                       color="white" if k[li, hi] < D / 2 else "black")
    fig.colorbar(im, ax=ax[1])
    values, counts = np.unique(k.astype(int), return_counts=True)
    ax[2].bar([str(v) for v in values], counts)
    ax[2].set(title="heads by kept count", xlabel="kept channels", ylabel="heads")
    fig.suptitle(f"{title} (K sparsity {1 - kept.float().mean().item():.3f})")
    fig.tight_layout()
    _save(fig, path)


def plot_alpha_channels(alpha: torch.Tensor, path, title: str = "") -> None:
    """Heatmap of every factor: rows = (layer, head), columns = channel."""
    a = alpha.float().numpy()
    L, H, D = a.shape
    fig, ax = plt.subplots(figsize=(8, 0.05 * L * H + 2))
    im = ax.imshow(a.reshape(L * H, D), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                   interpolation="nearest")
    ax.set(title=title or "alpha per channel", xlabel="channel", ylabel="layer * heads + head")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path)

"""Evaluation plots for the MLflow UI, read by product managers as much as by engineers.

Each function takes an :class:`~training.evaluation.EvaluationReport` and returns a matplotlib
``Figure`` built without pyplot (no global figure state, nothing to close, no GUI backend needed);
log it with ``mlflow.log_figure(fig, "plots/name.png")`` or ``fig.savefig(path)``.

    plot_metrics_vs_k(report)          precision / recall / NDCG / hit rate vs list length, per protocol
    plot_popularity_bias(report, ...)  popularity of recommended vs catalogue items, coverage and ARP
    plot_segments(report)              NDCG@k per shopper group (all, warm, cold, segments) with counts
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from training.evaluation import EvaluationReport

PROTOCOL_LABELS = {
    "new_items": "new items (repeat purchases excluded)",
    "all_items": "all items (repeat purchases count)",
}
_ACCURACY = (
    ("precision", "Precision@k (share of the list that was bought)"),
    ("recall", "Recall@k (share of purchases found)"),
    ("ndcg", "NDCG@k (purchases found, weighted by rank)"),
    ("hr", "Hit rate@k (shoppers with ≥1 purchase in the list)"),
)
_SLICE_LABELS = {"all": "all shoppers", "warm": "returning (warm)", "cold": "new (cold)"}


def _label(protocol: str) -> str:
    return PROTOCOL_LABELS.get(protocol, protocol)


# --- metrics vs k -----------------------------------------------------------------------------------
def plot_metrics_vs_k(report: EvaluationReport) -> Figure:
    """A 2×2 grid (precision, recall, NDCG, hit rate) against k, one line per protocol."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (metric, title) in zip(axes.flat, _ACCURACY, strict=True):
        for protocol in report.protocols:
            values = [report.value(protocol, metric, k) for k in report.ks]
            ax.plot(report.ks, values, marker="o", label=_label(protocol))
        ax.set_title(title)
        ax.set_xlabel("k (length of the recommendation list)")
        ax.set_ylabel(metric)
        ax.set_xticks(list(report.ks))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(title="evaluation protocol")
    fig.suptitle("Offline accuracy on held-out purchases, by recommendation list length")
    return fig


# --- popularity bias --------------------------------------------------------------------------------
def _popularity_bins(values: npt.NDArray[np.float64], n_bins: int) -> npt.NDArray[np.int64]:
    """Bin 0 = never seen in training; bin b ≥ 1 = popularity in [2^(b-1), 2^b)."""
    safe = np.maximum(values, 1.0)
    bins = np.where(values < 1, 0, np.floor(np.log2(safe)).astype(np.int64) + 1)
    return np.asarray(np.minimum(bins, n_bins - 1), dtype=np.int64)


def _bin_labels(n_bins: int) -> list[str]:
    labels = ["0"]
    for b in range(1, n_bins):
        lo, hi = 2 ** (b - 1), 2**b - 1
        labels.append(str(lo) if lo == hi else f"{lo}–{hi}")
    return labels


def _shares(values: npt.NDArray[np.float64], n_bins: int) -> npt.NDArray[np.float64]:
    counts = np.bincount(_popularity_bins(values, n_bins), minlength=n_bins).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def plot_popularity_bias(
    report: EvaluationReport,
    recommended_popularity: npt.ArrayLike | None = None,
    catalogue_popularity: npt.ArrayLike | None = None,
    *,
    protocol: str | None = None,
) -> Figure:
    """Share of catalogue items vs share of recommendation slots by item popularity (log2 bins).

    Popularity = distinct shoppers who had the item in training. The arrays default to the report's
    :class:`~training.evaluation.PopularityProfile` of ``protocol`` (the first protocol if None).
    A recommender without popularity bias would have the two bar series roughly match.
    """
    protocol = protocol or report.protocols[0]
    profile = report.popularity[protocol]
    rec = np.asarray(profile.recommended if recommended_popularity is None else recommended_popularity, np.float64)
    cat = np.asarray(profile.catalogue if catalogue_popularity is None else catalogue_popularity, np.float64)
    top = max(float(rec.max(initial=0.0)), float(cat.max(initial=0.0)), 1.0)
    n_bins = int(np.floor(np.log2(top))) + 2
    x = np.arange(n_bins)
    fig = Figure(figsize=(11, 6), layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, _shares(cat, n_bins), width=0.4, label=f"catalogue items ({len(cat):,})")
    ax.bar(x + 0.2, _shares(rec, n_bins), width=0.4, label=f"recommended slots, top-{profile.k} ({len(rec):,})")
    ax.set_xticks(x, _bin_labels(n_bins), rotation=30)
    ax.set_xlabel("Item popularity: distinct shoppers who interacted with it in training")
    ax.set_ylabel("Share")
    ax.legend(loc="upper left")
    _annotate_bias(ax, report, protocol, profile.k)
    ax.set_title(f"Popularity bias — {_label(protocol)}: what we recommend vs what the catalogue holds")
    return fig


def _annotate_bias(ax: Axes, report: EvaluationReport, protocol: str, k: int) -> None:
    lines = [
        f"catalogue coverage@{k}: {report.value(protocol, 'coverage', k):.1%} of items recommended to someone",
        f"avg. recommended popularity (ARP@{k}): {report.value(protocol, 'arp', k):.1f} shoppers "
        f"= {report.value(protocol, 'arp_ratio', k):.2f}× the catalogue average",
        f"long-tail share@{k}: {report.value(protocol, 'long_tail_share', k):.1%} of slots outside the top-20% items",
    ]
    box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.85}
    ax.text(0.99, 0.97, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=9, bbox=box)


# --- segments ---------------------------------------------------------------------------------------
def plot_segments(report: EvaluationReport, k: int | None = None) -> Figure:
    """NDCG@k per shopper group (all, warm, cold, each segment), one panel per protocol.

    Bars are labelled with their user counts; with an oracle, a black marker shows the best
    achievable NDCG for the group. ``k`` defaults to 10 when reported, else the smallest k.
    """
    k = k if k is not None else (10 if 10 in report.ks else report.ks[0])
    protocols = report.protocols
    fig = Figure(figsize=(max(7.0, 1.3 * (len(report.slices(protocols[0])) + 1) * len(protocols)), 5.5))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(protocols), squeeze=False, sharey=True)[0]
    for ax, protocol in zip(axes, protocols, strict=True):
        _segment_panel(ax, report, protocol, k)
    fig.suptitle(f"NDCG@{k} by shopper group (n = shoppers evaluated)")
    return fig


def _segment_panel(ax: Axes, report: EvaluationReport, protocol: str, k: int) -> None:
    slices = ["all", *report.slices(protocol)]
    values = [report.value(protocol, "ndcg", k, s) for s in slices]
    counts = [report.n_users[protocol if s == "all" else f"{protocol}.{s}"] for s in slices]
    bars = ax.bar(range(len(slices)), values, color=["tab:gray"] + ["tab:blue"] * (len(slices) - 1))
    ax.bar_label(bars, labels=[f"n={n:,}" for n in counts], padding=2, fontsize=8)
    oracle = [report.value(protocol, "oracle_ndcg", k, s) for s in slices]
    if not np.isnan(oracle).all():
        ax.plot(
            range(len(slices)), oracle, "k_", markersize=18, mew=2, linestyle="none", label="oracle (best possible)"
        )
        ax.legend(loc="upper right")
    ax.set_xticks(range(len(slices)), [_SLICE_LABELS.get(s, s.removeprefix("segment_")) for s in slices])
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(_label(protocol))
    ax.set_xlabel("shopper group")
    ax.set_ylabel(f"NDCG@{k}")
    ax.margins(y=0.15)

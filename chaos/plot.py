"""The run's picture: latency of every operation over time (successes by database, failures and
unknown outcomes marked apart), the faults as shaded spans (instant ones as lines) labelled by
kind. matplotlib, drawn off-screen to a PNG."""

from __future__ import annotations

from pathlib import Path


def plot(records: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [r for r in records if r.get("type", "op") == "op" and r["process"] != "final"]
    faults = [r for r in records if r.get("type") == "fault"]
    t0 = min((o["invoke"] for o in ops), default=0.0)
    fig, (lat, err) = plt.subplots(2, 1, figsize=(12, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    for db in sorted({o["db"] for o in ops}):
        ok = [o for o in ops if o["db"] == db and o["outcome"] == "ok"]
        lat.scatter([o["invoke"] - t0 for o in ok],
                    [max(o["complete"] - o["invoke"], 1e-5) * 1000 for o in ok],
                    s=2, alpha=0.5, label=f"{db}: ok")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    for outcome, color in (("fail", "tab:red"), ("unknown", "tab:orange")):
        bad = [o["invoke"] - t0 for o in ops if o["outcome"] == outcome]
        err.hist(bad, bins=max(1, int((max(bad, default=1) + 1) / 0.5)) if bad else 1,
                 color=color, alpha=0.7, label=outcome)
    err.set_ylabel("errors / 0.5 s")
    err.set_xlabel("seconds since the first operation")
    colors = {}
    palette = plt.get_cmap("tab10").colors
    for f in faults:
        color = colors.setdefault(f["kind"], palette[len(colors) % len(palette)])
        a, b = f["start"] - t0, (f.get("end") or f["start"]) - t0
        for ax in (lat, err):
            if b - a > 0.05:
                ax.axvspan(a, b, color=color, alpha=0.15)
            else:
                ax.axvline(a, color=color, alpha=0.8, linewidth=1)
        lat.annotate(f["kind"], (a, 1), xycoords=("data", "axes fraction"), rotation=90,
                     fontsize=7, va="top", ha="right", color=color)
    lat.legend(loc="upper right", fontsize=8, markerscale=4)
    err.legend(loc="upper right", fontsize=8)
    if title:
        lat.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

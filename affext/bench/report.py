"""The report in words: Markdown tables of the run, and the walk's sweep drawn log-log."""

from __future__ import annotations

from ..extras import require


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def format_report(report: dict) -> str:
    """The report as Markdown tables: the real-run shapes, then the walk's sweep."""
    env = report["environment"]
    lines = [
        f"affext bench, {report['mode']} ({report['note']})",
        f"device {report['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}; "
        f"{env['cpu']}, {_threads(env['threads'])}; torch {env['torch']}, CUDA "
        f"{env['cuda'] or '-'}; {env['dtype']}; load {env['load_average']}",
        "",
        "| work | implementation | time: median (min-max, calls) | peak extra memory "
        "| affext is faster / smaller by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in report["benchmarks"]:
        if entry["group"] != "shapes":
            continue
        first = True
        for impl, res in entry["results"].items():
            ratio = entry["ratios"].get(impl)
            lines.append(
                "| "
                + " | ".join(
                    [
                        entry["title"] if first else "",
                        impl,
                        _time_cell(res),
                        fmt_bytes(res.get("peak_extra_bytes")) if res["status"] == "ok" else "-",
                        f"{ratio['time']:.3g}x, {ratio['memory']:.3g}x" if ratio else "",
                    ]
                )
                + " |"
            )
            first = False
    sweep = [e for e in report["benchmarks"] if e["group"] == "scaling"]
    if sweep:
        impls = list(sweep[0]["results"])
        walk = sweep[0]["params"]
        lines += [
            "",
            f"random walk scaling, C={walk['channels']}, t={walk['iterations']}, "
            "psa-shaped CAMs: time (median), peak extra memory",
            "| map (N) | " + " | ".join(impls) + " |",
            "| --- |" + " --- |" * len(impls),
        ]
        for entry in sweep:
            size = entry["params"]["size"]
            cells = []
            for impl in impls:
                res = entry["results"][impl]
                cells.append(
                    f"{fmt_seconds(res['time']['median_s'])}, {fmt_bytes(res['peak_extra_bytes'])}"
                    if res["status"] == "ok"
                    else res["reason"]
                )
            lines.append(f"| {size}x{size} ({entry['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def _time_cell(res: dict) -> str:
    if res["status"] != "ok":
        return res["reason"]
    t = res["time"]
    spread = (
        f"{fmt_seconds(t['min_s'])}-{fmt_seconds(t['max_s'])}, {t['repeats']}"
        if t["repeats"] > 1
        else "1 call"
    )
    return f"{fmt_seconds(t['median_s'])} ({spread})"


def plot_report(report: dict, path: str) -> None:
    """The walk's sweep: time and peak extra memory against N, log-log, one line an
    implementation; the sizes where one was skipped are named in its legend entry."""
    require("affext bench --plot", ("matplotlib",))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [e for e in report["benchmarks"] if e["group"] == "scaling"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    env = report["environment"]
    where = env["gpu"] or f"{env['cpu']}, {_threads(env['threads'])}"
    walk = (
        f"C={sweep[0]['params']['channels']}, t={sweep[0]['params']['iterations']}, "
        if sweep
        else ""
    )
    fig.suptitle(
        f"affext bench ({report['mode']}): random walk, {walk}psa-shaped CAMs, "
        f"{report['device']} ({where})",
        fontsize=9,
    )
    impls = list(sweep[0]["results"]) if sweep else []
    for impl, marker in zip(impls, "os^v"):
        ok = [e for e in sweep if e["results"][impl]["status"] == "ok"]
        missed = [e["params"]["size"] for e in sweep if e["results"][impl]["status"] != "ok"]
        label = impl + (f" (not run: {', '.join(f'{s}x{s}' for s in missed)})" if missed else "")
        n = [e["n"] for e in ok]
        axes[0].plot(
            n, [e["results"][impl]["time"]["median_s"] for e in ok], marker=marker, label=label
        )
        axes[1].plot(
            n,
            [max(e["results"][impl]["peak_extra_bytes"], 1) / 1e6 for e in ok],
            marker=marker,
            label=label,
        )
    measured = any(e["results"][impl]["status"] == "ok" for e in sweep for impl in impls)
    for ax, ylabel in zip(axes, ("time a call (s, median)", "peak extra memory (MB)")):
        ax.set_xlabel("N = H * W (map pixels)")
        ax.set_ylabel(ylabel)
        if measured:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        else:
            ax.text(
                0.5,
                0.5,
                "no random walk measured",
                ha="center",
                transform=ax.transAxes,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

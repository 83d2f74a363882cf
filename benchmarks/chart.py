"""Draws a benchmark result (benchmarks/bench.py's JSON), on the CPU against
the machine's peak: for every conv layer at the run's main batch, the GFLOP/s of
forward+backward with our kernels and with torch's, as bars, and the float32
FMA peak measured in the same run as a line. Both bars count a direct
convolution's work; where our passes ran Winograd, which does fewer
multiply-adds, a hatched bar inside ours shows the rate of the arithmetic it
actually did. Results of a single batch size (rows without a "batch") draw
the same way.

    .venv/bin/python benchmarks/chart.py results/benchmarks/cpu-float32-DATE.json --out PNG
    .venv/bin/python benchmarks/chart.py RESULT.json --batch 1 --mode forward --out PNG
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", help="a JSON file written by benchmarks/bench.py")
    parser.add_argument("--mode", default="forward+backward",
                        choices=["forward", "backward-input", "backward-weight", "forward+backward"])
    parser.add_argument("--batch", type=int, help="the batch size to draw (default: the run's main batch)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args()
    with open(args.result) as f:
        result = json.load(f)
    batch = args.batch or result["batch"]
    rows = [r for r in result["rows"] if r["kind"] == "conv" and r["mode"] == args.mode
            and r.get("batch", result["batch"]) == batch and r.get("torch_gflops")]
    if not rows:
        raise SystemExit(f"{args.result}: no conv {args.mode} rows at batch {batch} with both sides' GFLOP/s "
                         "(written by an older bench.py, or a mode not timed at that batch?)")
    names = [r["layer"] for r in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    ax.barh([i - 0.2 for i in y], [r["ours_gflops"] for r in rows], height=0.4, label="custom_conv")
    theirs = "torch (cuDNN)" if result.get("device") == "cuda" else "torch (oneDNN)"
    ax.barh([i + 0.2 for i in y], [r["torch_gflops"] for r in rows], height=0.4, label=theirs)
    winograd = [(i, r["ours_true_gflops"]) for i, r in zip(y, rows) if r.get("ours_true_gflops")]
    if winograd:
        ax.barh([i - 0.2 for i, _ in winograd], [g for _, g in winograd], height=0.4, color="#a6c8e6",
                hatch="///", edgecolor="tab:blue", linewidth=0, label="custom_conv, Winograd's actual arithmetic")
    peaks = result.get("peak_gflops") or []
    if peaks:
        ax.axvline(min(peaks), color="black", linestyle="--",
                   label=f"float32 FMA peak ({' / '.join(f'{p:.0f}' for p in peaks)}: before / after)")
    ax.set_yticks(list(y), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GFLOP/s (direct-convolution arithmetic)")
    ax.set_title(f"conv {args.mode}, {result['dtype']}, batch {batch} — {result['machine']}, "
                 f"{result['date']}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""Learning curves of finished (or running) train.py runs, drawn from their
metrics.json: loss and accuracy per epoch, training and test, every run on
the same two charts (e.g. the same command with --backend custom and torch).

    python -m custom_conv.training.curves RUN_DIR [RUN_DIR ...] --out curves.png [--title TEXT]
"""
import argparse
import json
import sys
from pathlib import Path


def read_run(run_dir):
    """metrics.json of `run_dir` (a run directory or the file itself)."""
    path = Path(run_dir)
    path = path if path.suffix == ".json" else path / "metrics.json"
    return json.loads(path.read_text())


def label(metrics):
    config = metrics["config"]
    text = f"{config['backend']}: {100 * metrics['test_acc']:.2f}% test"
    target = config.get("target_test_acc")
    if target is not None and metrics.get("time_to_target_s") is not None:
        text += f", {100 * target:g}% after {metrics['time_to_target_s']:.0f} s"
    return text + f", {metrics['total_train_time_s'] / 60:.1f} min"


def draw(runs, out, title=None):
    """Writes the charts of `runs` (metrics.json contents) to the PNG `out`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, metrics in enumerate(runs):
        color = f"C{i}"
        history = metrics["history"]
        epochs = [row["epoch"] for row in history]
        name = label(metrics)
        ax_loss.plot(epochs, [row["train_loss"] for row in history], "--", color=color,
                     label=f"{metrics['config']['backend']}, training")
        ax_loss.plot(epochs, [row["test_loss"] for row in history], "-o", color=color, ms=3, label=name)
        ax_acc.plot(epochs, [100 * row["train_acc"] for row in history], "--", color=color)
        ax_acc.plot(epochs, [100 * row["test_acc"] for row in history], "-o", color=color, ms=3)
    first = runs[0]["config"]
    target = first.get("target_test_acc")
    if target is not None:
        ax_acc.axhline(100 * target, color="grey", lw=0.8, ls=":")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss (dashed: training)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (dashed: training)")
    # The last points matter most: the range starts at the lowest test
    # accuracy after the first epoch.
    low = min(100 * row["test_acc"] for metrics in runs for row in metrics["history"][1:] or metrics["history"])
    ax_acc.set_ylim(max(0.0, low - 1.0), 100.0)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(fontsize=7)
    fig.suptitle(title or f"{first['model']} on {first['dataset']} ({first['machine']}, {first['torch']})")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m custom_conv.training.curves", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or metrics.json files)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", help="default: model, dataset and machine of the first run")
    args = parser.parse_args(argv)
    try:
        runs = [read_run(r) for r in args.runs]
    except (OSError, ValueError) as error:
        sys.exit(f"curves: {error}")
    draw(runs, args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

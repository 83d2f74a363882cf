"""What a run reports: its lines on stdout and the contents of metrics.json
(and eval.json for --eval-only)."""
import json


def plural(n, word):
    """"1 epoch", "2 epochs"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def header_line(args, n_params, info, device, ddp, run_dir):
    return (f"{args.model} ({n_params:,} parameters, {args.backend} conv/max-pool) on {info['source']}; "
            f"{device}{f' x {ddp.world_size} processes' if ddp.enabled else ''}; run directory {run_dir}")


def epoch_row(epoch, train, test, lr):
    """One epoch's entry of metrics.json's history, from train_epoch's and evaluate's results."""
    return {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"], "test_loss": test["loss"],
            "test_acc": test["acc"], "lr": lr, "epoch_time_s": train["time_s"],
            "images_per_s": train["images_per_s"], "train_images": train["images"],
            "test_images": test["images"]}


def epoch_line(row, epochs, final=None):
    """An epoch's line; with `final` (final_metrics after it), it says when the epoch first reached the target."""
    line = (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc "
            f"{100 * row['train_acc']:6.2f}%  test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:6.2f}%"
            f"  lr {row['lr']:.4g}  {row['images_per_s']:,.0f} img/s  {row['epoch_time_s']:.1f} s")
    if final is not None and final.get("epochs_to_target") == row["epoch"]:
        line += (f"  reached {100 * final['config']['target_test_acc']:g}% after "
                 f"{final['time_to_target_s']:.0f} s of training")
    return line


def time_to_target(history, target):
    """(epochs, training seconds) until the test accuracy first reached `target`, or (None, None)."""
    seconds = 0.0
    for row in history:
        seconds += row["epoch_time_s"]
        if target is not None and row["test_acc"] >= target:
            return row["epoch"], seconds
    return None, None


def per_class_accuracy(confusion):
    """Each class's test accuracy from the confusion matrix `confusion` (rows: true class, columns:
    predicted); None for a class the test set has no image of."""
    return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(confusion)]


def class_results(confusion, classes):
    """metrics.json's (and eval.json's) per-class accuracy and confusion matrix."""
    return {"test_acc_per_class": dict(zip(classes, per_class_accuracy(confusion))),
            "test_confusion_matrix": {"rows": "true class", "columns": "predicted class", "classes": list(classes),
                                      "counts": confusion}}


def final_metrics(history, best_test_acc, epochs, config, confusion=None, classes=None):
    """metrics.json after the last epoch of `history`; "finished" once it is epoch `epochs`. The time to
    config["target_test_acc"] counts training only (not testing), summed over the epochs up to the first
    that reached it; null while none has. With the last test's `confusion` matrix (and the names of its
    `classes`), also the per-class accuracy and the matrix itself."""
    last = history[-1]
    epochs_to_target, seconds_to_target = time_to_target(history, config.get("target_test_acc"))
    out = {"test_acc": last["test_acc"], "test_loss": last["test_loss"], "best_test_acc": best_test_acc,
           "epochs_done": last["epoch"], "finished": last["epoch"] == epochs,
           "total_train_time_s": sum(r["epoch_time_s"] for r in history),
           "epochs_to_target": epochs_to_target, "time_to_target_s": seconds_to_target}
    if confusion is not None:
        out.update(class_results(confusion, classes))
    return out | {"config": config, "history": history}


def read_metrics(run_dir):
    """A finished run's metrics.json, or None where it has none."""
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def done_line(final, epochs, run_dir):
    target = final["config"].get("target_test_acc")
    reached = ("" if target is None else f", {100 * target:g}% after {final['time_to_target_s']:.0f} s"
               if final["time_to_target_s"] is not None else f", {100 * target:g}% not reached")
    return (f"done: test accuracy {100 * final['test_acc']:.2f}% after {plural(epochs, 'epoch')} "
            f"({final['total_train_time_s']:.0f} s training{reached}); {run_dir / 'metrics.json'}")


def eval_results(ckpt, result, info, device):
    """eval.json: a checkpoint's test loss and accuracy, overall and per class."""
    return {"checkpoint_epoch": ckpt["epoch"], "test_loss": result["loss"], "test_acc": result["acc"],
            "test_images": result["images"], "dataset_source": info["source"], "device": str(device),
            **class_results(result["confusion"], info["classes"])}


def eval_line(ckpt, result):
    return (f"eval  epoch {ckpt['epoch']}  test loss {result['loss']:.4f}  acc {100 * result['acc']:.2f}%  "
            f"({result['images']} images)")

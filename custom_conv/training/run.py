"""A run from start to end, as a sequence of the other modules' steps.

main() sets the process up (resume, device, torchrun) and tears it down;
run() loads the data and the model, then either tests a checkpoint
(--eval-only) or hands over to a Trainer, which runs the epochs and writes
the run directory.
"""
import functools
import sys
import time
from pathlib import Path

import torch

from .checkpoints import (BEST, CHECKPOINT, atomic_save, checkpoint_state, resolve_resume, restore, rng_state,
                          seed_everything, write_json)
from .config import default_logdir, hparams, run_config, settings
from .distributed import Dist, pick_device
from .loaders import load_data, make_loaders
from .loop import batches, evaluate, train_epoch
from .metrics import (done_line, epoch_line, epoch_row, eval_line, eval_results, final_metrics, header_line,
                      plural, read_metrics)
from .models import build_model, check_input_size, count_parameters, make_optimizer, make_scaler, make_scheduler
from .progress import Progress
from .tensorboard import StepScalars, log_epoch, log_graph, log_hparams, log_input, log_test_classes, open_writer


def _silent(*args, **kwargs):
    pass


def main(args, given):
    """Runs train.py for parsed options `args`; `given`: the names of those typed on the command line."""
    ddp = Dist()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Flushed, so that a log file (nohup, a cluster job) shows each line when it happens.
    log = functools.partial(print, flush=True) if ddp.main else _silent
    ckpt = resolve_resume(args, given) if args.resume else None
    if args.eval_only and ckpt is None:
        sys.exit("train.py: --eval-only needs --resume RUN_DIR_OR_CHECKPOINT")
    device = pick_device(args.device, args.backend, ddp)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ddp.start(device)
    try:
        return run(args, ddp, device, ckpt, log)
    finally:
        ddp.close()


def run(args, ddp, device, ckpt, log):
    """Trains (or with --eval-only tests `ckpt`) and returns what metrics.json (or eval.json) holds."""
    seed_everything(args.seed)
    train_set, test_set, info = load_data(args, ddp, log)
    model = build_model(args, info, device, ckpt)
    check_input_size(model, test_set[0][0], args, device)
    n_params = count_parameters(model)
    # Each process then draws its own augmentations; the data order comes
    # from the seeded generator and samplers.
    if ddp.enabled:
        seed_everything(args.seed + ddp.rank)
    generator = torch.Generator()
    generator.manual_seed(args.seed)
    loaders = make_loaders(train_set, test_set, args, ddp, device, generator)
    run_dir = Path(args.logdir or default_logdir(args))
    log(header_line(args, n_params, info, device, ddp, run_dir))
    if args.eval_only:
        return evaluate_checkpoint(model, loaders.test, ckpt, info, run_dir, args, ddp, device, log)
    config = run_config(args, info, train_set, test_set, n_params, ddp.world_size, device)
    trainer = Trainer(model, loaders, generator, run_dir, config, info["classes"], args, ddp, device, log)
    return trainer.fit(ckpt, probe=test_set[0][0] if ddp.main else None)


def evaluate_checkpoint(model, test_loader, ckpt, info, run_dir, args, ddp, device, log):
    """--eval-only: the test loss and accuracy of the weights in `ckpt`, also written to eval.json."""
    progress = Progress("test", log, args.progress_every, unit="batch") if ddp.main else None
    result = evaluate(model, test_loader, device, args, ddp, progress, num_classes=info["num_classes"])
    log(eval_line(ckpt, result))
    out = eval_results(ckpt, result, info, device)
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(out, run_dir / "eval.json")
    return out


class Trainer:
    """The epochs of a run: training, testing, reporting and a checkpoint after each."""

    def __init__(self, model, loaders, generator, run_dir, config, classes, args, ddp, device, log):
        self.model, self.loaders, self.generator, self.run_dir = model, loaders, generator, run_dir
        self.config, self.classes, self.args, self.ddp, self.device, self.log = config, classes, args, ddp, device, log
        self.ddp_model = ddp.wrap(model, device)
        self.optimizer = make_optimizer(args, model.parameters())
        self.scheduler = make_scheduler(args, self.optimizer)
        self.scaler = make_scaler(args, device)
        self.start_epoch, self.history, self.best_acc = 0, [], -1.0
        self.writer = self.step_scalars = self.probe = None
        self.steps_per_epoch = batches(loaders.train, args.limit_batches)
        self.epoch_times = []  # wall seconds of this process's epochs, for the run's ETA

    def fit(self, ckpt, probe):
        """Runs the epochs left (all of them unless `ckpt`); `probe`: the image whose feature maps are shown."""
        if ckpt is not None:
            self.start_epoch, self.history, self.best_acc = restore(
                ckpt, self.optimizer, self.scheduler, self.scaler, self.generator, self.ddp, self.log)
            if self.start_epoch >= self.args.epochs:
                self.log(f"the run has finished its {plural(self.args.epochs, 'epoch')} already; nothing to do "
                         "(a larger --epochs extends it)")
                return read_metrics(self.run_dir)
            self.log(self.resume_line(ckpt["args"]["epochs"]))
        if self.ddp.main:
            self.open_tensorboard(probe, resumed=ckpt is not None)
        final = None
        for epoch in range(self.start_epoch + 1, self.args.epochs + 1):
            final = self.epoch(epoch)
            if self.args.stop_after is not None and epoch >= self.args.stop_after and epoch < self.args.epochs:
                self.log(f"stopping after epoch {epoch} (--stop-after); continue with --resume {self.run_dir}")
                break
        if self.writer is not None:
            self.writer.close()
        if self.step_scalars is not None:
            self.step_scalars.close()
        if final is not None and final["finished"]:
            self.log(done_line(final, self.args.epochs, self.run_dir))
        return final

    def resume_line(self, saved_epochs):
        done, epochs = self.start_epoch, self.args.epochs
        if epochs == saved_epochs:
            return f"resuming after epoch {done} of {epochs}"
        # What the schedule does with the raised total (EpochSchedule): say it, with the rate it gives next.
        how = ("the learning rate stays" if self.args.schedule == "constant" else
               f"the {self.args.schedule} schedule is recomputed over {epochs} epochs")
        return (f"extending the run from {plural(saved_epochs, 'epoch')} to {epochs} after epoch {done}: {how}; "
                f"epoch {done + 1} trains at lr {self.optimizer.param_groups[0]['lr']:.4g}")

    def open_tensorboard(self, probe, resumed):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = open_writer(self.run_dir, resumed_after=self.start_epoch if resumed else None)
        if self.args.log_every:
            self.step_scalars = StepScalars(self.run_dir, self.args.log_every,
                                            self.start_epoch * self.steps_per_epoch if resumed else None)
        self.probe = probe.unsqueeze(0).to(self.device)  # the same image every epoch
        if not resumed:  # a resumed run's events have them already
            log_input(self.writer, self.probe)
            failed = log_graph(self.writer, self.model, self.probe)
            if failed:
                self.log(f"note: no model graph in TensorBoard; tracing the model failed ({failed})")

    def progress(self, label, unit, epochs_after=0):
        """Rank 0's Progress of one pass; None in the other processes, which show none."""
        if not self.ddp.main:
            return None
        pass_s = sum(self.epoch_times) / len(self.epoch_times) if self.epoch_times else None
        return Progress(label, self.log, self.args.progress_every, passes_after=epochs_after, pass_s=pass_s,
                        unit=unit)

    def epoch(self, epoch):
        """Trains and tests one epoch, reports it and saves a checkpoint; returns metrics.json's contents."""
        if self.loaders.sampler is not None:
            self.loaders.sampler.set_epoch(epoch)
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        last = min(self.args.epochs, self.args.stop_after or self.args.epochs)  # this process's last epoch
        progress = self.progress(f"epoch {epoch}/{self.args.epochs}", "step", max(0, last - epoch))
        train = train_epoch(self.ddp_model, self.loaders.train, self.optimizer, self.scaler, self.device,
                            self.args, self.ddp, epoch, progress, self.step_scalars)
        test = evaluate(self.model, self.loaders.test, self.device, self.args, self.ddp,
                        self.progress("test", "batch"), num_classes=len(self.classes))
        self.scheduler.step()
        self.best_acc = max(self.best_acc, test["acc"])
        row = epoch_row(epoch, train, test, lr)
        self.history.append(row)
        final = final_metrics(self.history, self.best_acc, self.args.epochs, self.config, test["confusion"],
                              self.classes)
        self.log(epoch_line(row, self.args.epochs, final))
        # Every process's RNG, so that each continues where it stopped.
        rng = self.ddp.gather(rng_state(self.generator))
        if self.ddp.main:
            self.write(epoch, row, test["confusion"], rng, final)
        self.epoch_times.append(time.perf_counter() - started)
        return final

    def write(self, epoch, row, confusion, rng, final):
        """Rank 0's part of an epoch: TensorBoard, checkpoint.pt (best.pt too when best) and metrics.json."""
        log_epoch(self.writer, self.model, epoch, row, self.probe)
        log_test_classes(self.writer, confusion, self.classes, epoch)
        state = checkpoint_state(self.model, self.optimizer, self.scheduler, self.scaler, epoch=epoch,
                                 args=self.config | hparams(self.args) | settings(self.args),
                                 history=self.history, best_test_acc=self.best_acc, rng=rng)
        atomic_save(state, self.run_dir / CHECKPOINT)
        if row["test_acc"] >= self.best_acc:
            atomic_save(state, self.run_dir / BEST)
        if epoch == self.args.epochs:
            log_hparams(self.writer, self.args, final)
        write_json(final, self.run_dir / "metrics.json")
        self.writer.flush()
        if self.step_scalars is not None:
            self.step_scalars.flush()

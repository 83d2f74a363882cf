"""Progress within one pass over the data (an epoch's training, a test):
tqdm's bar on a terminal; elsewhere (nohup, CI, a cluster job's log) a line
every --progress-every seconds, since a bar's carriage returns make a log
unreadable and the epoch's summary line may be an hour away.
"""
import sys
import time

from tqdm import tqdm


def on_terminal(stream=None):
    """Whether `stream` (default stderr, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def clock(seconds):
    """12:05 or 1:02:03."""
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


class Progress:
    """Reports one pass: start(total), then update() after each batch, then close().

    `label` starts each line ("epoch 2/10", "test"); `log` prints a line.
    `bar`: tqdm's bar instead of lines (default: when stderr is a terminal).
    `passes_after`: how many passes like this one the run has left after it,
    for the run's ETA (0: none shown); `pass_s`: the seconds one of them takes
    (an epoch's, testing and writing included), where known; else this pass's
    projected length stands in for it.
    """

    def __init__(self, label, log, every_s=30.0, bar=None, passes_after=0, pass_s=None, unit="step"):
        self.label, self.log, self.every_s, self.unit = label, log, every_s, unit
        self.use_bar = on_terminal() if bar is None else bar
        self.passes_after, self.pass_s = passes_after, pass_s
        self.bar = None

    def start(self, total):
        self.total, self.start_time = total, time.monotonic()
        self.next_line = self.start_time + self.every_s
        if self.use_bar:
            self.bar = tqdm(total=total, desc=self.label, leave=False, dynamic_ncols=True, unit=self.unit)

    def update(self, done, images, loss_sum):
        """`done` batches and `images` so far; `loss_sum`: their summed loss (a tensor is read only when shown,
        so that a GPU is not waited for after every batch)."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done % 10 == 0:
                self.bar.set_postfix(loss=f"{float(loss_sum) / max(images, 1):.4f}")
            return
        now = time.monotonic()
        if now < self.next_line:
            return
        self.next_line = now + self.every_s
        self.log(self.line(done, images, float(loss_sum) / max(images, 1), now - self.start_time))

    def line(self, done, images, loss, elapsed):
        rate = images / elapsed if elapsed > 0 else 0.0
        left = elapsed / done * (self.total - done)
        eta = f"ETA {clock(left)}"
        if self.passes_after:
            per_pass = self.pass_s if self.pass_s is not None else elapsed / done * self.total
            eta += f" (run {clock(left + self.passes_after * per_pass)})"
        return (f"  {self.label}  {self.unit} {done}/{self.total}  loss {loss:.4f}  {rate:,.0f} img/s  {eta}")

    def close(self):
        if self.bar is not None:
            self.bar.close()

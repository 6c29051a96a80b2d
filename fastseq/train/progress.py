"""Progress for the training loop: a tqdm bar on a terminal; in a log (stdout not a terminal: a file, a
pipe, CI), one plain line every few seconds — step, loss, tokens/s, elapsed time and ETA — rather than the
thousands of carriage-return redraws a bar writes there."""
from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m{rest % 60:02d}s" if h else f"{rest // 60}m{rest % 60:02d}s"


class LineProgress:
    """The part of tqdm's interface the Trainer uses (update, set_postfix, write, close), printing one line
    at most every `interval` seconds, and always the last step."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", interval: float = 5.0, stream=None):
        self.total, self.n, self.desc, self.interval = total, initial, desc, interval
        self.stream = stream if stream is not None else sys.stdout
        self.started = self.last = time.perf_counter()
        self.first, self.postfix = initial, {}

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval or self.n >= self.total:
            self.last = now
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to flush: update printed the last step's line."""

    def _line(self, now: float) -> None:
        elapsed, done = now - self.started, self.n - self.first
        eta = elapsed / done * (self.total - self.n) if done else 0.0
        extra = "  ".join(f"{k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc} step {self.n}/{self.total} ({100 * self.n / max(1, self.total):.0f}%)  {extra}  "
              f"elapsed {_clock(elapsed)}  eta {_clock(eta)}", file=self.stream, flush=True)


def progress(total: int, initial: int = 0, desc: str = "train"):
    """tqdm when stdout is a terminal and tqdm is installed, else LineProgress."""
    if sys.stdout.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
    return LineProgress(total, initial, desc)

"""Progress reporting for the package's long loops (bench, check, LR range test, optimizer comparison).

On a terminal it is a tqdm bar redrawn in place. On a pipe or a file (CI logs, ``2> log.txt``) a bar
redrawn with carriage returns is unreadable, so there it writes one plain line each time the label
changes (one line per case, per epoch, ...) and never a carriage return.
"""

import sys
import time


class Progress:
    """``update(done, label)`` with ``done`` the units finished (fractional while one runs)."""

    WIDTH = 28

    def __init__(self, total, stream=None, unit="case"):
        self.total = max(total, 1)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self.last_label = None
        self.unit = unit
        self.bar = None

    def update(self, done, label, detail=None):
        """Show ``done`` of ``total`` finished, ``label`` running now; ``detail`` (a figure that changes every
        update, such as the current loss) is shown on a terminal only."""
        elapsed = time.monotonic() - self.started
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                # "[#####.....] 3/8 12s label", ASCII only (any terminal, any font); drawn from the first update.
                self.bar = tqdm(total=self.total, file=self.stream, unit=self.unit, ascii=".#", delay=1e9,
                                bar_format="[{bar:%d}] {desc}" % self.WIDTH, leave=False)
            self.bar.n = min(done, self.total)
            text = f"{int(done)}/{self.total} {elapsed:5.0f}s {label}" + (f" {detail}" if detail else "")
            self.bar.set_description_str(text[:90], refresh=False)
            self.bar.refresh()
        elif label != self.last_label:
            current = min(int(done) + 1, self.total)
            self.stream.write(f"[{current}/{self.total}, {elapsed:.0f}s] {label}\n")
            self.stream.flush()
        self.last_label = label

    def clear(self):
        """Erase the bar before other output is printed (the next ``update`` redraws it)."""
        if self.bar is not None:
            self.bar.clear()

    def close(self):
        """Remove the bar for good (a no-op on a pipe)."""
        if self.bar is not None:
            self.bar.clear()
            self.bar.close()
            self.bar = None

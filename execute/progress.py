"""Live progress of a run: a rich panel on a terminal, plain lines otherwise.

Shows the workers starting, then trials started / running / finished / failed, the best
metric so far (a resumed run's included) and how many devices are busy. On a non-terminal
(CI, a log file) it prints one line whenever a count changes, so logs stay short and
greppable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from nasalloc.sim.formatting import format_duration


class Progress:
    def __init__(self, n_devices: int, mode: str = "auto", stream: TextIO | None = None, title: str = "nasalloc run"):
        self.stream = stream or sys.stderr
        self.n_devices = n_devices
        self.title = title
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self._last: tuple | None = None
        self._t0 = time.monotonic()
        self._live: Any = None
        self._shown_messages = 0
        self._last_start: str | None = None
        if mode == "rich":
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.stream)
            self._live = Live(self._render(None), console=self._console, refresh_per_second=4, transient=False)
            self._live.start()

    def _state(self, loop: Any) -> tuple:
        s = loop.scheduler
        started = len(s.trials)
        best = "-" if loop.stats.best is None else f"{loop.stats.best:.4g} (trial {loop.stats.best_trial})"
        return (started, len(loop.running), loop.stats.finished, loop.stats.failed, best, loop.pool.busy_devices)

    def _render(self, state: tuple | None, starting: str = "starting workers ...") -> Any:
        from rich.table import Table

        t = Table(title=self.title, show_header=False, box=None)
        if state is None:
            t.add_row(starting)
            return t
        started, running, finished, failed, best, busy = state
        t.add_row("trials", f"{started} started, {running} running, {finished} finished, {failed} failures")
        t.add_row("best metric", best)
        t.add_row("devices busy", f"{busy}/{self.n_devices}")
        t.add_row("elapsed", format_duration(time.monotonic() - self._t0))
        return t

    def starting(self, ready: int, total: int) -> None:
        """Worker start-up: "starting N workers…" at once, then how long they took; on a
        terminal the panel counts them as they connect."""
        if self.mode == "rich":
            self._live.update(self._render(None, f"starting {total} workers … {ready}/{total} ready"))
        elif ready == 0 or ready == total:
            text = (f"starting {total} workers…" if ready < total
                    else f"{total} workers ready in {format_duration(time.monotonic() - self._t0)}")
            if text != self._last_start:
                self._print(text)
                self._last_start = text

    def update(self, loop: Any) -> None:
        for msg in loop.stats.messages[self._shown_messages :]:
            self._print(msg)
        self._shown_messages = len(loop.stats.messages)
        state = self._state(loop)
        if self.mode == "rich":
            self._live.update(self._render(state))
        elif self.mode == "plain" and state != self._last:
            started, running, finished, failed, best, busy = state
            self._print(f"[{time.monotonic() - self._t0:7.1f}s] trials {started} started, {running} running, "
                        f"{finished} finished, {failed} failures | best {best} | devices busy {busy}/{self.n_devices}")
        self._last = state

    def _print(self, text: str) -> None:
        if self.mode == "none":
            return
        if self.mode == "rich":
            self._console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

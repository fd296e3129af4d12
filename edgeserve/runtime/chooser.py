"""Whether batching pays under the load a model has now, decided by measuring both ways.

Batching saves engine time (one run for many rows) and costs a thread hand-off per request (a follower waits,
then wakes for its answer). Which wins depends on the model and the machine, not on a rule of thumb: on a 2-core
machine where a wake-up costs ~50 us, a 784->64->10 MLP answering one row in ~15 us loses half its throughput to
batching at 4 callers, while a 512->2048->2048->10 MLP more than doubles it. So the batcher runs in one of two
ways and :class:`Chooser` keeps it in the faster one:

- ``BATCH``: requests that arrive while the engine runs queue and run together (see :mod:`.batcher`);
- ``DIRECT``: every caller runs its own request at once in its own thread, as without a batcher.

Time is cut into short epochs (``EPOCH_S`` and at least ``EPOCH_MIN`` answered requests). An epoch's rows per
second is the measure: with callers that wait for their answer it is the throughput they get, and at a fixed
offered load both ways answer everything, so a tie costs nothing. The first epoch of a burst (after ``IDLE_S``
of silence) is not measured: callers are still arriving. A fresh model whose first runs are shorter than
``QUICK_RUN_S``, or as long as ``SLOW_RUN_S`` or longer, starts direct.

The winner runs; the other way is tried for one epoch now and then, less often each time it loses again
(``RECHECK_S``), or at once when the winner's rate falls below the other's last one by more than ``MARGIN`` in two
epochs running. Within the margin it is a tie: one caller runs its request at once either way, and retrying the
other way whenever the winner's epoch reads a little low would spend a third of the time on trials. One low epoch
is not enough either: an epoch over a pause in the load reads low. The challenger takes over only if it beats the
winner's epochs on both sides of its own by ``MARGIN``, so one slow epoch (callers still starting, a noisy
neighbour) cannot hand it the model. Neither way is ruled out without measuring it: an engine kept busy by
batches is not proof that batching pays (a small transformer at 4 callers kept the engine busy with batches and
answered 0.6x what callers running side by side did, since its operators parallelise poorly inside one run). The
winner is measured all along and compared with the loser's last rate, so a load that changes under it (more
callers, a bigger model's share of the cores) turns the choice within a few epochs.

Pure bookkeeping: times are passed in, nothing here reads a clock or takes a lock (the batcher calls it holding
its own lock), so it is tested with made-up times.
"""

from __future__ import annotations

BATCH = "batch"
DIRECT = "direct"

EPOCH_S = 0.02
EPOCH_MIN = 16
IDLE_S = 0.1
QUICK_RUN_S = 0.0001
"""Runs shorter than this (a thread wake-up is ~50 us on a busy 2-core machine) make a fresh model start direct."""
SLOW_RUN_S = 0.002
"""Runs this long or longer make a fresh model start direct too: a hand-off is a negligible share of them, so
batching gains only what the engine saves on bigger runs, which for a convolutional network on a CPU is little,
while callers running side by side fill the cores one run leaves idle (an int8 segmentation network, 15 ms a row,
at 4 callers: 0.84x of no batcher over its first 3 s, started batched); and its epochs are long, so learning that
takes seconds."""
MARGIN = 0.05
RECHECK_S = (0.5, 16.0)
"""The loser is measured again after the first interval, doubled each time it loses again, up to the second."""


class Chooser:
    """Keeps a model's batcher in whichever way of running (``BATCH`` or ``DIRECT``) answers more rows per second."""

    def __init__(self, start: str = BATCH) -> None:
        self.winner = start
        self.mode = start
        """The way requests run now: the winner, or the other way for one epoch on trial."""
        self.rates: dict[str, float | None] = {BATCH: None, DIRECT: None}
        """Rows per second of each way's latest epoch (None: never measured)."""
        self._before: float | None = None
        """The winner's rate in the epoch before a trial."""
        self._trial: float | None = None
        """The challenger's rate in its trial, waiting for the winner's next epoch."""
        self._interval = RECHECK_S[0]
        self._recheck_at = 0.0
        self._low = 0
        """The winner's epochs in a row that read below the loser's last rate."""
        self._epoch_start: float | None = None
        self._settling = True
        """The current epoch is not measured (a burst is beginning)."""
        self._answered = 0
        self._requests = 0
        self._busy_s = 0.0
        self._last = float("-inf")
        self.direct_until = float("-inf")
        """Until when a request may run the direct way without coming here (and so without the batcher's lock):
        the end of the current epoch while the way is direct, else never. A request past it comes here, and under
        load one does every epoch, so a gap longer than ``IDLE_S`` since the last arrival seen here is silence."""

    def arrived(self, now: float) -> str:
        """A request arrives at ``now``: the way it runs."""
        if now - self._last > IDLE_S:  # a new burst: callers are still arriving
            self._epoch_start = None
            if self.mode != self.winner:  # NOTE: a trial the silence cut short is dropped, not carried into the
                # burst: it ran on in its way through the settling epoch and one more (the digits MLP at 4 callers
                # in 0.2 s bursts: ~80 ms a burst batched at 1/15 of the direct way's rate, 0.66-0.78x);
                # it is tried again after the burst's first measured epoch
                self.mode = self.winner
                self._trial = self._before = None
        self._last = now
        if self._epoch_start is None:
            self._settling = True
            self._new_epoch(now)
        elif now - self._epoch_start >= EPOCH_S and self._requests >= EPOCH_MIN:
            if self._settling:
                self._settling = False
                self._first_guess()
            else:
                self._end_epoch(now, self._answered / (now - self._epoch_start))
            self._new_epoch(now)
        assert self._epoch_start is not None
        self.direct_until = self._epoch_start + EPOCH_S if self.mode == DIRECT else float("-inf")
        return self.mode

    def answered(self, requests: int, rows: int, busy_s: float = 0.0) -> None:
        """``requests`` of ``rows`` rows in all were answered (successfully or not: the engine ran them);
        ``busy_s``: how long the engine ran for them, when they ran the batched way."""
        self._answered += rows
        self._requests += requests
        self._busy_s += busy_s

    def _first_guess(self) -> None:
        """Before anything is measured: a model whose runs take less than ``QUICK_RUN_S`` or at least
        ``SLOW_RUN_S`` starts direct (batching is tried after its first measured epoch, as a way never measured
        always is), so a fresh model under load does not spend its first epochs batched when a hand-off costs more
        than its run, or when its runs are too long for a hand-off to matter. In between (a small transformer, a
        wide MLP) batching starts: there it most often pays."""
        if self.rates[BATCH] is None and self.rates[DIRECT] is None and self._requests and self._busy_s > 0:
            if not QUICK_RUN_S <= self._busy_s / self._requests < SLOW_RUN_S:
                self.winner = self.mode = DIRECT

    def _new_epoch(self, now: float) -> None:
        self._epoch_start, self._answered, self._requests, self._busy_s = now, 0, 0, 0.0

    def _end_epoch(self, now: float, rate: float) -> None:
        self.rates[self.mode] = rate
        other = DIRECT if self.mode == BATCH else BATCH
        if self.mode != self.winner:  # a trial ended: the winner's next epoch judges it
            self._trial = rate
            self.mode = self.winner
            return
        if self._trial is not None and self._before is not None:
            if self._trial > max(self._before, rate) * (1 + MARGIN):
                self.winner = self.mode = other
                self._interval = RECHECK_S[0]
            else:  # NOTE: not faster when it lost by far: one noisy epoch reads far below, and a way left
                # untried for seconds misses the load that turns the choice (the wide MLP stayed direct at 4 and 32
                # callers, 1.00-1.06x, when two such readings at 1 caller put its next trial 8 s away)
                self._interval = min(self._interval * 2, RECHECK_S[1])
            self._recheck_at = now + self._interval
            self._before = self._trial = None
            return
        theirs = self.rates[other]
        below = theirs is not None and rate * (1 + MARGIN) < theirs  # NOTE: not at a tie
        self._low = self._low + 1 if below else 0
        # NOTE: below the other's rate twice running, not once: one epoch over a pause in the load (callers
        # between two bursts closer than IDLE_S) reads low, and a trial lost by far costs a busy model several
        # epochs' worth (the wide MLP at 32 callers: ~6% of its rows/s with a trial per 0.3 s burst)
        if theirs is None or now >= self._recheck_at or self._low >= 2:
            self._before = rate
            self._low = 0
            self.mode = other

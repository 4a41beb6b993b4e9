"""When a run is stalled: how long a step may take (train.stall_timeout), how long a collective
may wait for its peers, and what the workers' stacks say about where each rank was stuck.
Plain Python: the driver's watchdog (launch.py) and the workers (trainer.py) share these rules."""

import importlib.util
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

AUTO_FLOOR = 300.0  # seconds: auto never calls a run stalled sooner
AUTO_FACTOR = 10  # auto: this many times the slowest step seen


def step_limit(setting: float | str, slowest_step: float = 0.0) -> float | None:
    """Seconds without progress before a run is stalled (None: train.stall_timeout off)."""
    if setting == "off":
        return None
    if setting == "auto":
        return max(AUTO_FLOOR, AUTO_FACTOR * slowest_step)
    return float(setting)


def collective_limit(setting: float | str, slowest_step: float = 0.0) -> float | None:
    """Seconds a collective (gloo, NCCL) waits for its peers before it raises: past the step
    limit, so that the watchdog dumps the stacks first, and soon enough that a peer stuck for
    good fails the step instead of holding it for torch's default 30 minutes."""
    limit = step_limit(setting, slowest_step)
    return None if limit is None else limit + max(30.0, limit / 2)


@dataclass(frozen=True)
class RankStack:
    """One worker's Python stacks (py-spy's dump) when the run stalled."""

    rank: int
    pid: int
    stopped: bool  # the process was stopped (SIGSTOP, a debugger)
    text: str  # py-spy's dump, or why there is none

    def frames(self) -> list[str]:
        """The training thread's frames (Ray Train runs it apart from the process's main
        thread), innermost first: 'function (file:line)'."""
        threads = [t for t in re.split(r"\n(?=Thread )", self.text) if t.startswith("Thread ")]
        training = next((t for t in threads if "gentrain/trainer.py" in t), None)
        training = training or next(iter(threads), "")
        return [line.strip() for line in training.splitlines()[1:] if line.strip()]

    def waits_for_peers(self) -> bool:
        frames = self.frames()
        return bool(frames) and any(
            part in frames[0] for part in ("torch/distributed/", "torch/nn/parallel/distributed")
        )

    def where(self) -> str:
        """Its innermost frame, and the innermost of gentrain's (or the user's) below it."""
        frames = self.frames()
        if not frames:
            why = (self.text.strip().splitlines() or ["py-spy gave none"])[-1]
            return f"(no stack: {why})"
        own = next((f for f in frames if not _library_frame(f)), None)
        return frames[0] if own in (None, frames[0]) else f"{frames[0]}, called from {own}"


def _library_frame(frame: str) -> bool:
    """Whether a frame is Python's or an installed library's (not gentrain's, not the user's)."""
    found = re.search(r"\(([^/:()]+?)(?:\.py)?[/:]", frame)
    if not found:
        return True
    top = found[1]
    if top in sys.stdlib_module_names:
        return True
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    return bool(spec and spec.origin and "-packages" in spec.origin)


def explain(step: int, seconds: float, stacks: list[RankStack]) -> str:
    """One line for the terminal: the ranks stuck on their own first (stopped, else those not in
    a collective), then the ranks that wait for them."""
    culprits = [s for s in stacks if s.stopped]
    culprits = culprits or [s for s in stacks if not s.waits_for_peers()] or stacks
    waiting = [s for s in stacks if s not in culprits]
    parts = [
        f"rank {s.rank} {'(process stopped) ' if s.stopped else ''}in {s.where()}" for s in culprits
    ]
    if waiting:
        ranks = ", ".join(str(s.rank) for s in waiting)
        verb = "ranks {} wait" if len(waiting) > 1 else "rank {} waits"
        parts.append(f"{verb.format(ranks)} in {waiting[0].where()}")
    return f"stalled after step {step}: no progress for {seconds:.0f} s; " + "; ".join(parts)


@dataclass(frozen=True)
class Beat:
    """Rank 0's latest word: it made progress (`count` grew) at `step`."""

    pid: int  # rank 0's process: a beat of an earlier attempt is not this one's
    step: int
    count: int
    slowest_step: float  # seconds, this attempt's slowest training step so far


class Pulse:
    """Rank 0's progress, as the driver's watchdog hears it. `beat` (each step, each part of
    an evaluation) only records; a thread of its own sends the latest beat once a second, so a
    step costs no call and a training thread that hangs leaves its last step told. Nothing is
    sent before the first progress: the watchdog is armed by it, not by a worker still starting
    (restoring a checkpoint, building its model). While rank 0 is `working` at something with
    no step to show (exporting the model), or has `finished`, the thread beats for it; a frozen
    process sends nothing either way."""

    EVERY = 1.0  # seconds

    def __init__(self, pid: int, every: float = EVERY):
        self.latest = Beat(pid, step=0, count=0, slowest_step=0.0)
        self.every = every
        self._working = 0
        # the first progress is told at once: it arms the watchdog, and a worker that hangs
        # within its first second of training must not go unwatched
        self._started = threading.Event()

    def beat(self, step: int, slowest_step: float) -> None:
        self.latest = Beat(self.latest.pid, step, self.latest.count + 1, slowest_step)
        if self.latest.count == 1:
            self._started.set()

    @contextmanager
    def working(self) -> Iterator[None]:
        self._working += 1
        self._started.set()
        try:
            yield
        finally:
            self._working -= 1

    def finished(self) -> None:
        self._working += 1  # until the process ends: its logs closing, Ray winding it up
        self._started.set()

    def start(self, send: Callable[[Beat], None]) -> None:
        threading.Thread(target=self._send, args=(send,), daemon=True).start()

    def _send(self, send: Callable[[Beat], None]) -> None:
        told = self.latest
        self._started.wait()
        while True:
            if self._working:
                self.beat(self.latest.step, self.latest.slowest_step)
            if self.latest != told:
                told = self.latest
                send(told)
            time.sleep(self.every)


@dataclass(frozen=True)
class Stall:
    step: int
    seconds: float
    stacks: list[RankStack]
    message: str


class Watchdog(threading.Thread):
    """The driver's watch over one run's workers. When rank 0 has made no progress for the step
    limit while every worker is alive, it dumps each worker's stacks (`on_stall`), then leaves
    the collectives their timeout to fail the step; workers still there after that (or at once,
    for one worker: no collective to time out) are killed, and Ray Train restarts them from the
    last checkpoint (train.max_failures). A kill that failed (Ray too busy to run it) or left a
    worker alive is tried again every `kill_again` seconds."""

    GRACE = 10.0  # seconds after the collectives' timeout before the workers are killed

    def __init__(
        self,
        setting: float | str,
        *,
        world: int,
        poll: Callable[[], tuple[list, Beat | None]],
        inspect: Callable[..., list[dict]],
        kill: Callable[[list], None],
        on_stall: Callable[[Stall], None],
        on_step: Callable[[int], None],
        interval: float = 1.0,
        kill_again: float = 30.0,
    ):
        super().__init__(daemon=True, name="gentrain-watchdog")
        self.setting, self.world = setting, world
        self.poll, self.inspect, self.kill = poll, inspect, kill
        self.on_stall, self.on_step, self.interval = on_stall, on_step, interval
        self.kill_again = kill_again
        self.stopping = threading.Event()
        self.stall: Stall | None = None  # the latest
        self._stalled_attempt: tuple[int, ...] = ()
        self._attempt: tuple[int, ...] = ()  # its workers' pids
        self._reset()

    def _reset(self) -> None:
        self._beat: Beat | None = None  # none yet: not armed before this attempt's first step
        self._progress_at = time.monotonic()
        self._stalled_at: float | None = None
        self._checked_at = 0.0
        self._killed_at: float | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self._watch()
            except Exception:  # Ray busy or restarting: the next round looks again
                pass

    def _watch(self) -> None:
        workers, beat = self.poll()
        if len(workers) < self.world:
            return
        attempt = tuple(sorted(w.pid for w in workers))
        if attempt != self._attempt:
            self._attempt = attempt
            self._reset()
        rank0 = next(w for w in workers if w.rank == 0)
        now = time.monotonic()
        progressed = beat and beat.count and (self._beat is None or beat.count != self._beat.count)
        if progressed and beat.pid == rank0.pid:
            self._beat, self._progress_at, self._stalled_at = beat, now, None
            self.on_step(beat.step)
        if self._beat is None:
            return
        silent = now - self._progress_at
        slowest = self._beat.slowest_step
        limit = step_limit(self.setting, slowest)
        if limit is None:  # train.stall_timeout: off
            return
        if self._stalled_at is None:
            if silent > limit and now - self._checked_at > 10:
                self._checked_at = now
                self._dump(workers, silent)
        elif self.world == 1 or silent > collective_limit(self.setting, slowest) + self.GRACE:
            self._kill(workers, now)  # the next attempt's workers reset the watch

    def _kill(self, workers: list, now: float) -> None:
        if self._killed_at is not None and now - self._killed_at < self.kill_again:
            return
        again, self._killed_at = self._killed_at is not None, now
        # once killed, Ray Train may take a while to start the next attempt: only a worker
        # still alive is killed again
        if not again or any(f["alive"] for f in self.inspect(workers, stacks=False)):
            self.kill(workers)

    def _dump(self, workers: list, silent: float) -> None:
        found = self.inspect(workers, stacks=True)
        if not all(f["alive"] for f in found):  # a worker died: Ray Train restarts them
            return
        stacks = [
            RankStack(rank=w.rank, pid=w.pid, stopped=f["stopped"], text=f["text"])
            for w, f in sorted(zip(workers, found, strict=True), key=lambda p: p[0].rank)
        ]
        step = self._beat.step
        self.stall = Stall(step, silent, stacks, explain(step, silent, stacks))
        self._stalled_attempt, self._stalled_at = self._attempt, time.monotonic()
        self.on_stall(self.stall)

    def cause(self) -> Stall | None:
        """The stall of the workers that were running last, if they stalled: why the run failed
        when Ray Train gives up on them."""
        return self.stall if self.stall and self._stalled_attempt == self._attempt else None

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=30)

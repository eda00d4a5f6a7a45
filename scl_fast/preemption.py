"""Signals a training run answers without losing work, and the loader workers' share of it.

=========  ==========================================================================================================
signal     what the trainer does
=========  ==========================================================================================================
SIGTERM    finishes the current step, writes a checkpoint, stops the loader workers, flushes the logs and exits with
           ``EXIT_PREEMPTED`` (75): resumable with ``--train.resume auto`` (schedulers preempt with SIGTERM)
SIGINT     the same (Ctrl-C); a second SIGINT stops at once (KeyboardInterrupt), keeping the last checkpoint
SIGUSR1    writes a checkpoint after the current step and goes on (SLURM's ``--signal=USR1@<seconds>``)
SIGKILL    nothing can be done in the process: the last checkpoint stays; the loader workers die with the trainer
=========  ==========================================================================================================

The handlers only set flags; the loop reads them between steps (under DDP/FSDP the ranks agree on them first, so all
stop at the same step and write one checkpoint together). Loader workers ignore SIGINT and SIGTERM, which a terminal
or a scheduler sends to the whole process group: the trainer decides when they stop. Each exits as soon as the trainer
has exited (a thread waiting on the trainer's pidfd), so a SIGKILLed trainer leaves no worker blocked on a full pipe.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from types import FrameType

from scl_fast.errors import EXIT_PREEMPTED

__all__ = ["EXIT_PREEMPTED", "Preempted", "StopSignals", "worker_init"]


class Preempted(Exception):  # noqa: N818 (not an error: the run stopped as asked)
    """The run stopped at a signal's request after writing its checkpoint."""

    def __init__(self, signal_name: str, step: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class StopSignals:
    """Install the handlers for the duration of a ``with`` block (main thread only; elsewhere a no-op).

    ``stop`` is the name of the first SIGTERM/SIGINT received (None before); ``checkpoint_requested`` is set by
    SIGUSR1 and cleared by whoever writes the checkpoint.
    """

    def __init__(self) -> None:
        self.stop: str | None = None
        self.checkpoint_requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                                 (signal.SIGUSR1, self._on_usr1)):
                self._previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.stop = self.stop or name
        _say(f"received {name}: stopping after this step with a checkpoint (SIGINT again to stop at once)")

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self.checkpoint_requested = True
        _say("received SIGUSR1: writing a checkpoint after this step")


def _say(message: str) -> None:
    try:  # os.write: safe inside a signal handler, unlike print (which may hold stdout's lock)
        os.write(sys.stderr.fileno(), f"\n{message}\n".encode())
    except (OSError, ValueError):
        pass


def worker_init(worker_id: int, *, trainer_pid: int) -> None:
    """``worker_init_fn`` of the loader's DataLoader (bound to the trainer's pid with ``functools.partial``): die with
    the trainer, leave SIGINT/SIGTERM to it.

    The worker's parent is the fork server the trainer started (the loader's default, ``worker_context``), not the
    trainer, and that server outlives the trainer while workers hold it open: so the worker watches the trainer
    itself, a thread waiting on a pidfd that becomes readable when the trainer exits (a worker blocked on a full
    pipe still dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(trainer_pid,), name="scl-watch-trainer", daemon=True).start()


def _exit_with(pid: int) -> None:
    """Exit this process as soon as process ``pid`` has exited (already gone: at once)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (not Linux, or a kernel before 5.3): poll
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(0.5)
    select.select([fd], [], [])  # readable once the process has exited (reaped or not)
    os._exit(1)

"""The one retry policy, for every network call (GCS uploads, reads, compose): a
jittered exponential backoff, bounded, every wait cut short by a stop request or the
caller's own cancel event. Apart from `gcs` so that reading a local archive does not
load the Google libraries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from ..stopping import STOP

__all__ = ["RETRY", "RetryPolicy", "pause"]

# How long a waiting thread sleeps between looks at the stop flag.
_SLICE = 0.1

T = TypeVar("T")


def pause(seconds: float, cancel: threading.Event | None = None) -> None:
    """Sleep, in short slices, until ``seconds`` pass or ``cancel`` is set; raise
    Interrupted as soon as a stop is requested. A backoff can be half a minute, and a
    signal must not wait that long (the handler only sets a flag)."""
    deadline = time.monotonic() + seconds
    while True:
        STOP.check()
        left = deadline - time.monotonic()
        if left <= 0 or (cancel is not None and cancel.is_set()):
            return
        if cancel is not None:
            cancel.wait(min(left, _SLICE))
        else:
            time.sleep(min(left, _SLICE))


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff: each wait is random below 1, 2, 4 … 32 s. Nine
    attempts wait two minutes at most in all, about what a GCS front-end hiccup or a
    VM's network blip lasts; then the command fails and can be run again to resume."""

    attempts: int = 9
    multiplier: float = 1.0
    max_wait: float = 32.0

    @classmethod
    def for_retries(cls, retries: int) -> RetryPolicy:
        """The policy with ``retries`` tries after the first (``--upload-retries``)."""
        return cls(attempts=retries + 1)

    def call(
        self,
        fn: Callable[[int], T],
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        sleep: Callable[[float], None] = pause,
    ) -> T:
        """``fn(attempt_number)``, retried on ``retry_on``; the last error is re-raised."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.multiplier, max=self.max_wait),
            retry=retry_if_exception_type(retry_on),
            sleep=sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return fn(attempt.retry_state.attempt_number)
        raise AssertionError("unreachable: tenacity re-raises the last error")


RETRY = RetryPolicy()

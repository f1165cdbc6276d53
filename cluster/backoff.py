"""When to restart gearmand again: at once the first time, then exponential backoff with jitter.

Deaths are counted in a sliding window; too many in it is a crash loop, which the agent reports
as the `failed` state (it keeps retrying at the longest delay).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    window: float = 60.0
    crash_loop_deaths: int = 5
    base_delay: float = 0.2
    max_delay: float = 30.0
    deaths: deque[float] = field(default_factory=deque)

    def record_death(self, now: float) -> float:
        """Note a death at `now` (monotonic seconds); return how long to wait before restarting."""
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > self.window:
            self.deaths.popleft()
        recent = len(self.deaths)
        if recent <= 1:
            return 0.0
        delay = min(self.max_delay, self.base_delay * 2 ** (recent - 2))
        return delay * random.uniform(0.5, 1.0)

    @property
    def crash_looping(self) -> bool:
        return len(self.deaths) >= self.crash_loop_deaths

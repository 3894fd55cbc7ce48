"""Small numerical helpers shared by several steps (one place for each)."""

from __future__ import annotations

import math


def fft_friendly(n: float) -> int:
    """The smallest even integer >= ``n`` (and >= 2) whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    m = max(2, int(math.ceil(n)))
    m += m % 2
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 2

"""What the stages accept as a number from a user (no heavy imports)."""

from __future__ import annotations

import numpy as np


def is_real(value) -> bool:
    """A real number: an int, a float or a numpy integer or floating value; not a bool, a
    complex number, text or None."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )

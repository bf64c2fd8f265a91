"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(Exception):
    """Missing, corrupt or mismatched input data, or an invalid data configuration.

    The message always names the offending file or key and says what to do about it.
    """

"""When a short-lived certificate is renewed: at two thirds of its life. Pure.

Its life counts from when its holder received it, not from its notBefore: the CA
backdates every certificate a few minutes (for peers whose clocks lag), which
would otherwise eat a 6-second certificate's whole life before it began. A
certificate read back from a file at start counts from then: two thirds of what is
left of it.
"""

from __future__ import annotations

import datetime as dt

FRACTION = 2 / 3


def renew_at(not_before: dt.datetime, not_after: dt.datetime, received: dt.datetime) -> dt.datetime:
    """When a certificate valid from `not_before` to `not_after`, received at
    `received`, is due for renewal."""
    start = max(not_before, received)
    return start + (not_after - start) * FRACTION

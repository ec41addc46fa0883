"""Hypothesis settings for the property and fuzz tests: bounded in `make test`, larger in `make fuzz`.

``FUZZ_EXAMPLES`` (set by `make fuzz`) replaces every test's own example count; the tests read it
here because they, unlike library code, may look at the environment.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def examples(bounded: int) -> settings:
    """``bounded`` examples in `make test`, FUZZ_EXAMPLES in `make fuzz`; no per-example deadline
    (examples over sockets vary in time), and a server fixture shared by every example is intended."""
    return settings(
        max_examples=FUZZ_EXAMPLES or bounded,
        # The bounded run tries the same examples every time (a CI failure reproduces); make fuzz explores.
        derandomize=not FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )

"""Fixtures for every tier live in ``tests/support``; this file only registers them."""

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.gateway",
    "tests.support.jwks",
    "tests.support.kms_proxy",
    "tests.support.regions",
    "tests.support.storage",
    "tests.support.temporal",
]

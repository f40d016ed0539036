"""The real Mosquitto + receiver fixtures of tests/uplink, for the serial end-to-end test."""

from tests.uplink.conftest import broker, pki, receivers  # noqa: F401 - fixtures

"""Simulated devices for tests and the demo: mock BlueZ on D-Bus, serial devices, CPAP cards."""

"""CPAP from the SD card: see docs/cpap.md."""

"""Tests of the encrypted buffer."""

"""Power cuts, not only SIGKILL: the real buffer on a card that loses unsynced writes.

``tests/buffer/test_crash.py`` kills the process; the kernel keeps everything it was given.
Here the store lives on :mod:`hw_mocks.powerfs`, a FUSE filesystem that keeps only what was
synced and, at a power cut, drops or tears every write since the last sync and loses unsynced
name changes. :mod:`tests.powerloss.campaign` boots the box again and again, each boot ending
in a cut at a random filesystem operation inside an append, claim, ack, purge or the open, and
checks every promise after every cut (see its docstring for the list).
"""

from __future__ import annotations

import os

import pytest
from hw_mocks import powerfs

from tests.powerloss import campaign

CUTS = int(os.environ.get("DHO_POWERLOSS_CUTS", "200"))

pytestmark = pytest.mark.skipif(
    powerfs.unavailable_reason() is not None,
    reason=f"no FUSE power-cut card here: {powerfs.unavailable_reason()}",
)


def test_power_cuts_lose_no_returned_append_and_the_store_always_opens() -> None:
    # Since claims write nothing and acks delete (7 December 2026), a boot runs further before
    # its cut (200 cuts: 35,246 appends in 68 s, were 11,116 in 40 s): 1,000 cuts beside a
    # test suite (load ~2) made 954 boots in the fixed 600 s. The deadline scales with the cuts.
    result = campaign.run(CUTS, deadline_s=max(600.0, 1.2 * CUTS))
    print(f"power-cut campaign: {result.as_dict()}")
    assert not result.findings, f"seed {result.seed}: {result.findings}"
    assert result.cuts >= CUTS
    for label in ("append", "claim", "ack", "purge", "open"):
        assert result.by_label[label] >= CUTS // 20, f"too few cuts in {label}: {result.by_label}"
    assert result.torn_writes > 0
    assert result.dropped_writes > 0
    assert result.append_promises_checked > 10 * CUTS


def test_the_checker_finds_losses_when_commits_are_not_synced() -> None:
    """The negative control: the same campaign with ``synchronous=OFF`` must lose readings,
    or the card and the checker could not see a loss at all."""
    result = campaign.run(30, unsafe=True)
    print(f"unsafe campaign: {result.as_dict()}")
    assert result.lost > 0, result.as_dict()

"""Topics of the uplink protocol v1 (``docs/uplink-protocol.md`` section 3).

Every topic carries the box id, never a patient reference. The broker's ACL lets a box use
only topics with its own id (the CN of its certificate).
"""

from __future__ import annotations

from typing import Final

from dho_protocol.errors import MalformedMessageError

TOPIC_ROOT: Final = "dho/v1"
SHARE_GROUP: Final = "dho-receivers"


def check_box_id(box_id: str) -> str:
    """``box_id`` if it can be used in topics (1 to 64 characters, none of ``/ + # $`` or NUL).

    Raises:
        ValueError: it cannot.
    """
    if not box_id or any(c in box_id for c in "/+#$\x00") or len(box_id) > 64:
        raise ValueError(f"not a usable box id: {box_id!r}")
    return box_id


def batch_topic(box_id: str) -> str:
    """Where a box publishes its batches."""
    return f"{TOPIC_ROOT}/up/{check_box_id(box_id)}/batch"


def status_topic(box_id: str) -> str:
    """Retained ``online``/``offline`` state of a box (the last will sets ``offline``)."""
    return f"{TOPIC_ROOT}/up/{check_box_id(box_id)}/status"


def report_topic(box_id: str) -> str:
    """Status reports a box publishes on request (JSON, no patient data)."""
    return f"{TOPIC_ROOT}/up/{check_box_id(box_id)}/report"


def alive_topic(box_id: str) -> str:
    """A box's keep-alive: empty QoS 0 publishes that nobody subscribes to (they only tell
    the broker the box is there, and cost no answer; ``docs/uplink-protocol.md`` 2.2)."""
    return f"{TOPIC_ROOT}/up/{check_box_id(box_id)}/alive"


def ack_topic(box_id: str) -> str:
    """Where the receiver publishes acknowledgements for one box."""
    return f"{TOPIC_ROOT}/down/{check_box_id(box_id)}/ack"


def command_topic(box_id: str) -> str:
    """Where the service publishes signed commands for one box."""
    return f"{TOPIC_ROOT}/down/{check_box_id(box_id)}/cmd"


SHARED_BATCH_SUBSCRIPTION: Final = f"$share/{SHARE_GROUP}/{TOPIC_ROOT}/up/+/batch"
"""The receivers' shared subscription: each batch goes to one receiver of the group."""


def box_of_batch_topic(topic: str) -> str:
    """The box id in a batch topic.

    Raises:
        MalformedMessageError: the topic is not a batch topic.
    """
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{TOPIC_ROOT}/up" or parts[4] != "batch":
        raise MalformedMessageError(f"not a batch topic: {topic!r}")
    return parts[3]

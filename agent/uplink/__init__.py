"""Store-and-forward uplink to the DHO service over MQTT v5 with mutual TLS.

Protocol: ``docs/uplink-protocol.md``. Modules:

* :mod:`agent.uplink.protocol`: topics, signed batch envelopes, acknowledgements, commands
  (pure, shared with the receiver),
* :mod:`agent.uplink.payload`: the compact lossless encoding of readings (pure),
* :mod:`agent.uplink.policy`: back-off, adaptive batch size, acknowledgement timeout (pure),
* :mod:`agent.uplink.state`: persistent sequence numbers and command counter,
* :mod:`agent.uplink.link`: the paho-mqtt 2.x connection driven from asyncio,
* :mod:`agent.uplink.sender`: :class:`Uplink`, the sender loop and command handling.
"""

from agent.uplink.link import LinkConfig, LinkState, MqttLink, check_clock
from agent.uplink.sender import Uplink, UplinkConfig, UplinkStatus

__all__ = [
    "LinkConfig",
    "LinkState",
    "MqttLink",
    "Uplink",
    "UplinkConfig",
    "UplinkStatus",
    "check_clock",
]

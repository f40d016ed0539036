"""Store-and-forward uplink to the DHO service over MQTT v5 with mutual TLS.

Protocol: ``docs/uplink-protocol.md``, implemented by the shared, pure package
:mod:`dho_protocol` (envelopes, payload encoding, topics, errors, TLS settings). Modules here:

* :mod:`agent.uplink.endpoints`: MQTT over TLS on 8883 or over WebSockets on 443 (pure),
* :mod:`agent.uplink.policy`: back-off, adaptive batch size, acknowledgement timeout (pure),
* :mod:`agent.uplink.state`: persistent sequence numbers and command counter,
* :mod:`agent.uplink.link`: the paho-mqtt 2.x connection driven from asyncio,
* :mod:`agent.uplink.sender`: :class:`~agent.uplink.sender.Uplink`, the sender loop and
  command handling.

Importing this package loads nothing: import the module you need (only ``link`` and
``sender`` load paho).
"""

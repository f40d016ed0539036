"""Store-and-forward uplink to the DHO service over MQTT v5 with mutual TLS.

Protocol: ``docs/uplink-protocol.md``, implemented by the shared, pure package
:mod:`dho_protocol` (envelopes, payload encoding, topics, errors, TLS settings). Modules here:

* :mod:`agent.uplink.session`: the delivery rules as a sans-IO state machine (pure),
* :mod:`agent.uplink.endpoints`: MQTT over TLS on 8883 or over WebSockets on 443 (pure),
* :mod:`agent.uplink.policy`: reconnecting, adaptive batch size, acknowledgement timeout (pure),
* :mod:`agent.uplink.state`: persistent sequence numbers, command counter, batch size,
* :mod:`agent.uplink.netwatch`: notices when the network comes back (netlink),
* :mod:`agent.uplink.link`: the paho-mqtt 2.x connection driven by the event loop,
* :mod:`agent.uplink.sender`: :class:`~agent.uplink.sender.Uplink`, the shell that runs the
  session against the buffer and the link, and handles commands.

Importing this package loads nothing: import the module you need (only ``link`` and
``sender`` load paho).
"""

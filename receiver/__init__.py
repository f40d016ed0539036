"""Reference receiver for the central DHO service (``docs/receiver.md``).

Subscribes to every box's batches over a shared MQTT v5 subscription, verifies each batch's
Ed25519 signature against the box's enrolled key, stores its readings idempotently, then
publishes a signed acknowledgement; exports stored readings as FHIR R4 (PHD IG).
"""

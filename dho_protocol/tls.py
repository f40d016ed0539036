"""TLS settings shared by the box and the receiver (``docs/uplink-protocol.md`` section 2).

Both ends talk to the broker as TLS clients with a client certificate: TLS 1.2 or newer, the
broker's certificate verified against the pinned DHO CA only (never the system store), the
host name checked. :func:`client_context` builds that context; it reads files but opens no
connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MINIMUM_VERSION: Final = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The files of one TLS client identity.

    Attributes:
        ca_file: the CA that issued the broker's certificate (pinned; not the system store).
        cert_file: this client's certificate (chain), its CN is the client's identity.
        key_file: this client's private key.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS client context with the protocol's settings and ``files`` loaded.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: a file does not hold a usable certificate or key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(files.ca_file))
    ctx.load_cert_chain(certfile=str(files.cert_file), keyfile=str(files.key_file))
    return ctx

"""Build the broker's subscription check, ``dho_subscribe_acl.so`` (a Mosquitto 2.x plugin).

Mosquitto's ACL file never checks SUBSCRIBE requests, only each delivery, so a box could
join the receivers' shared subscription and make every n-th batch of every box vanish
(``receiver/mosquitto/dho_subscribe_acl.c`` explains it). The plugin lets a box subscribe
only to its own downlink topics. This module compiles it with the system C compiler
(Debian: ``gcc``, ``mosquitto-dev``, ``libmosquitto-dev``)::

    python -m receiver.brokerplugin /usr/lib/mosquitto      # deployment
    build(cache_dir)                                         # tests and the demo (cached)

and gives the ``mosquitto.conf`` lines that load it (:func:`config_lines`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).resolve().parent / "mosquitto" / "dho_subscribe_acl.c"
BOX_FILTERS: Final = ("dho/v1/down/%u/ack", "dho/v1/down/%u/cmd", "dho/v1/enrol/%c/reply")
"""The only subscriptions a box may make: ``%u`` is its username (the certificate CN),
``%c`` its client id (a box enrolling logs in as ``dho-enrol`` with its token id as client id,
``docs/enrolment.md``). They match the ``pattern read`` lines of ``dho.acl``."""
HEADERS: Final = ("/usr/include/mosquitto_plugin.h", "/usr/include/mosquitto.h")


class PluginBuildError(RuntimeError):
    """The plugin cannot be built here (no compiler or headers, or a compiler error)."""


def unavailable_reason() -> str | None:
    """Why the plugin cannot be built on this machine, or None."""
    if shutil.which("cc") is None:
        return "no C compiler (cc) to build the broker plugin (Debian package gcc)"
    missing = [h for h in HEADERS if not Path(h).exists()]
    if missing:
        return (
            f"no Mosquitto plugin headers ({', '.join(missing)}): Debian packages mosquitto-dev"
            " and libmosquitto-dev"
        )
    return None


def build(out_dir: Path) -> Path:
    """Compile the plugin into ``out_dir`` (reused while the source is unchanged).

    Raises:
        PluginBuildError: no compiler or headers, or the compiler failed.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise PluginBuildError(reason)
    tag = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"dho_subscribe_acl-{tag}.so"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
    os.close(fd)
    cmd = ["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-o", tmp, str(SOURCE)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise PluginBuildError(f"cc failed: {done.stderr.strip()[:2000]}")
    Path(tmp).chmod(0o755)
    os.replace(tmp, target)  # atomic: concurrent builds end with one complete file
    return target


def config_lines(plugin: Path, service_users: Iterable[str]) -> list[str]:
    """The ``mosquitto.conf`` lines that load the plugin.

    ``service_users`` are the service's identities (receivers, command issuer): their
    subscriptions are left to the ACL file. Everyone else is a box.
    """
    users = " ".join(service_users)
    lines = [f"plugin {plugin}", f"plugin_opt_box_filters {' '.join(BOX_FILTERS)}"]
    if users:
        lines.append(f"plugin_opt_service_users {users}")
    return lines


def service_users_of(acl_file: Path) -> list[str]:
    """The ``user`` names of an ACL file (the service identities it grants topics to)."""
    users = []
    for line in acl_file.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "user":
            users.append(words[1])
    return users


def main(argv: list[str]) -> int:
    """``python -m receiver.brokerplugin DIR``: build the plugin into DIR, print its path."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m receiver.brokerplugin OUTPUT_DIR\n")
        return 2
    try:
        path = build(Path(argv[0]))
    except (PluginBuildError, OSError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

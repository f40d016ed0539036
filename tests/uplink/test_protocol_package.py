"""The wire-protocol package is one pure contract: no MQTT client, no asyncio, no agent I/O.

Both the box's uplink and the receiver depend on :mod:`dho_protocol`; these tests keep it that
way (a paho or asyncio import creeping in, or the receiver reaching into the agent's I/O
code, fails here).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dho_protocol

REPO = Path(__file__).resolve().parents[2]
# The pure data model of readings is shared; nothing else of the agent is.
_RECEIVER_MAY_IMPORT = {"agent.model", "agent.codes", "agent.clock"}


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_importing_the_protocol_loads_no_paho_no_asyncio_and_no_agent_io():
    loaded = _modules_after("import dho_protocol")
    assert not {m for m in loaded if m.split(".")[0] in {"paho", "asyncio", "receiver"}}
    agent = {m for m in loaded if m.startswith("agent.")}
    assert agent <= _RECEIVER_MAY_IMPORT, agent - _RECEIVER_MAY_IMPORT


def test_the_receivers_decision_core_loads_no_paho():
    loaded = _modules_after("import receiver.core, receiver.store, receiver.fhir")
    assert not {m for m in loaded if m.startswith(("paho", "asyncio", "agent.uplink"))}


def test_the_receiver_imports_only_the_data_model_of_the_agent():
    for path in sorted((REPO / "receiver").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                if node.module == "agent":
                    names = [f"agent.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "agent" or name.startswith("agent."):
                    assert name in _RECEIVER_MAY_IMPORT, f"{path.name} imports {name}"


def test_the_package_exports_exactly_its_public_names():
    public = sorted(n for n in vars(dho_protocol) if not n.startswith("_") and not _is_submodule(n))
    assert sorted(dho_protocol.__all__) == public
    assert len(set(dho_protocol.__all__)) == len(dho_protocol.__all__)


def _is_submodule(name: str) -> bool:
    return type(getattr(dho_protocol, name)).__name__ == "module"


def test_errors_are_one_tree_with_stable_reason_tokens():
    leaves = [
        dho_protocol.MalformedMessageError,
        dho_protocol.UnsupportedVersionError,
        dho_protocol.MessageTooLargeError,
        dho_protocol.SignatureError,
        dho_protocol.ReplayError,
        dho_protocol.UnknownBoxError,
    ]
    assert all(issubclass(c, dho_protocol.ProtocolError) for c in leaves)
    assert [c.reason for c in leaves] == [
        "malformed",
        "version",
        "oversized",
        "forged",
        "replayed",
        "unknown-box",
    ]

"""Configuration: the whole file validated at start, one error per bad key, naming it.

Issue 9 ("Logs and inputs") and issue 10 ("Agent runtime"): types and ranges of every key,
unknown keys, device tables checked by their transport, paths, and the box identity.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig
from agent.errors import ConfigError
from receiver.localstack import make_pki


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    return f


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(exc.value).splitlines()[1:]


def test_defaults_when_the_default_file_is_missing(tmp_path: Path) -> None:
    cfg = AgentConfig.load(state_dir=tmp_path)
    assert cfg.buffer_path == tmp_path / "buffer.db"
    assert cfg.uplink is None
    assert cfg.devices == ()
    assert cfg.buffer_config().cap_bytes == 2048 * 2**20


def test_full_file(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """
state_dir = "/srv/dho"
[buffer]
cap_mb = 64
reserve_mb = 0
key = "credential:dho-buffer-kek"
[uplink]
host = "127.0.0.1"
port = 18883
box_id = "box-0001"
ca_file = "ca.pem"
cert_file = "/etc/dho-gateway/box.crt"
key_file = "box.key"
signing_key_file = "sign.pem"
service_key_file = "service.pub"
[ble]
adapter = "hci1"
[serial]
rescan_interval = 2
download_interval = 7.5
[[devices]]
family = "and-bpm"
patient = "p"
address = "00:09:1F:4B:6B:01"
""",
    )
    cfg = AgentConfig.load(f)
    assert (cfg.serial.rescan_interval, cfg.serial.download_interval) == (2.0, 7.5)
    assert cfg.state_dir == Path("/srv/dho")
    assert cfg.buffer_config().cap_bytes == 64 * 2**20
    assert cfg.buffer_config().reserve_bytes == 0
    assert cfg.key_source().description == "systemd credential dho-buffer-kek"
    assert cfg.uplink is not None
    assert cfg.uplink.ca_file == tmp_path / "ca.pem"  # relative to the configuration file
    assert cfg.uplink.cert_file == Path("/etc/dho-gateway/box.crt")
    assert cfg.ble_adapter == "hci1"
    assert cfg.devices[0]["family"] == "and-bpm"


def test_every_bad_key_is_named_once_and_no_value_is_echoed(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """
state_dir = "relative/dir"
colour = 1
[buffer]
cap_mb = "big"
reserve_mb = -1
size = 3
[uplink]
host = "mqtt.example"
port = 70000
box_id = "box/#"
ca_file = "ca.pem"
cert_file = 7
key_file = "box.key"
signing_key_file = "sign.pem"
[ble]
adapter = "bt0"
[[devices]]
family = "and-bpm"
address = "00:09:1F:4B:6B:01"
[[devices]]
transport = "zigbee"
patient = "PATIENT-SECRET-42"
[[devices]]
family = "and-bpm"
patient = "PATIENT-SECRET-43"
address = "not-an-address"
""",
    )
    with pytest.raises(ConfigError) as exc:
        AgentConfig.load(f)
    lines = _problems(exc)
    assert str(exc.value).splitlines()[0] == f"{f}: 13 bad settings:"
    by_key = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines}
    assert by_key == {
        "state_dir": "must be an absolute path (e.g. /var/lib/dho-gateway)",
        "colour": "unknown setting"
        " (known here: ble, buffer, care, devices, light, runtime_dir, serial, state_dir, uplink)",
        "buffer.cap_mb": "must be a whole number, not a string",
        "buffer.reserve_mb": "must be at least 0",
        "buffer.size": "unknown setting (known here: cap_mb, key, reserve_mb)",
        "uplink.port": "must be at most 65535",
        "uplink.box_id": by_key["uplink.box_id"],
        "uplink.cert_file": "must be a path (a string), not a whole number",
        "uplink.service_key_file": "is required",
        "ble.adapter": "must be an adapter name like hci0",
        "[[devices]][0].patient": by_key["[[devices]][0].patient"],
        "[[devices]][1].transport": by_key["[[devices]][1].transport"],
        "[[devices]][2].address": by_key["[[devices]][2].address"],
    }
    assert "no '/', '+' or '#'" in by_key["uplink.box_id"]
    assert "unknown transport 'zigbee'" in by_key["[[devices]][1].transport"]
    text = str(exc.value)
    for value in ("big", "PATIENT-SECRET", "not-an-address", "relative/dir", "70000", "bt0"):
        assert value not in text
    assert exc.value.hint is not None
    assert "dho-agent config check" in exc.value.hint


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[buffer]\ncap_mb = 0", "buffer.cap_mb", "must be at least 1"),
        ("[buffer]\ncap_mb = 1.5", "buffer.cap_mb", "must be a whole number, not a decimal number"),
        ("[buffer]\ncap_mb = true", "buffer.cap_mb", "must be a whole number, not true or false"),
        ('[buffer]\ncap_mb = "64"', "buffer.cap_mb", "must be a whole number, not a string"),
        ("[buffer]\nreserve_mb = 5000", "buffer.reserve_mb", "must be at most 4096"),
        (
            '[buffer]\nkey = "tpm"',
            "buffer.key",
            'must be "file", "credential:NAME" or "tpm2[:NAME]"',
        ),
        ('[buffer]\nkey = ""', "buffer.key", "must not be empty"),
        ("buffer = 3", "buffer", "must be a table, not a whole number"),
        ("devices = 3", "devices", "must be an array of tables ([[devices]]), not a whole number"),
        ("devices = [3]", "[[devices]][0]", "must be a table ([[devices]])"),
        ("state_dir = 5", "state_dir", "must be a path (a string), not a whole number"),
    ],
)
def test_types_and_ranges(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        AgentConfig.load(_write(tmp_path, text))
    assert _problems(exc) == [f"{key}: {reason}"]


def test_devices_are_checked_by_their_transport(tmp_path: Path) -> None:
    f = _write(tmp_path, '[[devices]]\nfamily = "and-bpm"\naddress = "00:09:1F:4B:6B:01"\n')
    with pytest.raises(ConfigError) as exc:
        AgentConfig.load(f)
    assert _problems(exc)[0].startswith("[[devices]][0].patient: ")
    assert AgentConfig.load(f, check_devices=False).devices[0]["family"] == "and-bpm"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.toml", "does not exist"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d, "[buffer\n"), "is not valid TOML"),
        (lambda d: (d / "agent.toml").write_bytes(b"\xff\xfe") and d / "agent.toml", "not UTF-8"),
    ],
)
def test_unreadable_files_say_what_is_wrong(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        AgentConfig.load(make(tmp_path))
    assert exc.value.hint


# -- preflight: what only the machine can tell ------------------------------------------------


def _box(tmp_path: Path, box_id: str = "box-0001", cn: str = "box-0001") -> Path:
    pki = make_pki(tmp_path / "pki")
    cert, key = pki.client(cn)
    signing = tmp_path / "sign.pem"
    signing.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    service = tmp_path / "service.pub"
    service.write_bytes(
        pki.service_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return _write(
        tmp_path,
        f"""
state_dir = "{tmp_path / "state"}"
[uplink]
host = "127.0.0.1"
box_id = "{box_id}"
ca_file = "{pki.ca.ca_file}"
cert_file = "{cert}"
key_file = "{key}"
signing_key_file = "{signing}"
service_key_file = "{service}"
""",
    )


def test_preflight_passes_for_a_provisioned_box(tmp_path: Path) -> None:
    AgentConfig.load(_box(tmp_path)).preflight()


def test_a_box_id_that_is_not_the_certificate_cn_fails_with_that_message(tmp_path: Path) -> None:
    cfg = AgentConfig.load(_box(tmp_path, box_id="box-0002", cn="box-0001"))
    with pytest.raises(ConfigError) as exc:
        cfg.preflight()
    assert _problems(exc) == [
        f"uplink.box_id 'box-0002' does not match the CN 'box-0001' of the box certificate "
        f"{cfg.uplink.cert_file if cfg.uplink else ''}: set box_id to the certificate's CN, or "
        "install the certificate issued for this box"
    ]
    assert "ACL" not in str(exc.value)


def test_preflight_names_every_bad_file(tmp_path: Path) -> None:
    cfg = AgentConfig.load(_box(tmp_path))
    assert cfg.uplink is not None
    cfg.uplink.ca_file.unlink()
    cfg.uplink.signing_key_file.write_bytes(cfg.uplink.service_key_file.read_bytes())
    other = make_pki(tmp_path / "other").client("box-0001")[1]
    cfg.uplink.key_file.write_bytes(other.read_bytes())
    cfg.uplink.service_key_file.unlink()
    cfg.uplink.service_key_file.mkdir()
    with pytest.raises(ConfigError) as exc:
        cfg.preflight()
    assert _problems(exc) == [
        f"uplink.ca_file: {cfg.uplink.ca_file} does not exist",
        f"uplink.service_key_file: {cfg.uplink.service_key_file} is not a regular file",
        f"uplink.key_file: {cfg.uplink.key_file} is not the private key of the box certificate "
        f"{cfg.uplink.cert_file}",
        f"uplink.signing_key_file: {cfg.uplink.signing_key_file} is not an Ed25519 private key "
        "(PKCS#8 PEM)",
    ]


def test_preflight_refuses_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    cfg = AgentConfig.load(state_dir=tmp_path / "state" / "sub")
    with pytest.raises(ConfigError, match=r"state_dir: .*state is not a directory"):
        cfg.preflight()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere (tests/test_cli_errors.py)")
def test_preflight_refuses_an_unwritable_state_dir(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="not writable"):
        AgentConfig.load(state_dir=tmp_path / "ro" / "state").preflight()


def test_serial_intervals_reach_the_serial_driver(tmp_path: Path) -> None:
    from agent.drivers.contract import DriverContext
    from agent.drivers.registry import validate_device_table
    from agent.drivers.serial.driver import SerialDriver
    from agent.drivers.serial.transport import TRANSPORT

    table = validate_device_table(
        0, {"transport": "serial", "family": "beurer-bm65", "port": "/dev/x", "patient": "p"}
    )
    settings = {"rescan_interval": 2.0, "download_interval": 7.5, "hotplug": "poll"}
    driver = TRANSPORT.create([table], None, DriverContext(tmp_path, settings))  # type: ignore[arg-type]
    assert isinstance(driver, SerialDriver)
    assert driver.options.rescan_interval == 2.0
    assert driver.options.family.download_interval == 7.5
    bad = DriverContext(tmp_path, {"download_interval": 0})
    with pytest.raises(ConfigError, match=r"serial\.download_interval"):
        TRANSPORT.create([table], None, bad)  # type: ignore[arg-type]


def test_the_status_report_lives_in_the_runtime_directory(tmp_path: Path) -> None:
    """On tmpfs (/run/dho-gateway), not the card; readers also look where older agents
    wrote it, and take the fresher of the two."""
    from agent.status import read_latest, write_status

    run, state = tmp_path / "run", tmp_path / "state"
    f = _write(tmp_path, f'state_dir = "{state}"\nruntime_dir = "{run}"\n')
    cfg = AgentConfig.load(f)
    assert cfg.status_path == run / "status.json"
    assert cfg.status_paths == (run / "status.json", state / "status.json")
    assert read_latest(cfg.status_paths) is None
    write_status(state / "status.json", {"written_at": 5.0, "where": "state"})
    assert read_latest(cfg.status_paths) == {"written_at": 5.0, "where": "state"}
    write_status(run / "status.json", {"written_at": 9.0, "where": "run"})
    assert (read_latest(cfg.status_paths) or {})["where"] == "run"
    # another state directory (--state-dir) keeps its report beside it
    other = AgentConfig.load(f, state_dir=tmp_path / "copy")
    assert other.status_path == tmp_path / "copy" / "status.json"
    assert AgentConfig.load(state_dir=state).status_paths == (state / "status.json",)


def test_metered_uplink_settings(tmp_path: Path) -> None:
    from agent.config import METERED_UPLINK

    base = (
        '[uplink]\nhost = "h"\nbox_id = "b"\nca_file = "/a"\ncert_file = "/a"\n'
        'key_file = "/a"\nsigning_key_file = "/a"\nservice_key_file = "/a"\n'
    )
    cfg = AgentConfig.load(_write(tmp_path, base), state_dir=tmp_path)
    assert cfg.uplink is not None
    assert (cfg.uplink.linger_s, cfg.uplink.keepalive_s) == (0.0, 60)  # bench, demo, tests
    extra = "".join(f"{k} = {v}\n" for k, v in METERED_UPLINK.items())
    cfg = AgentConfig.load(_write(tmp_path, base + extra), state_dir=tmp_path)
    assert cfg.uplink is not None
    assert (cfg.uplink.linger_s, cfg.uplink.keepalive_s) == (3600.0, 1200)
    with pytest.raises(ConfigError) as bad:
        AgentConfig.load(_write(tmp_path, base + 'linger_s = "600"\nkeepalive_s = 5\n'))
    assert len(_problems(bad)) == 2


def test_broker_autosave_reaches_the_link(tmp_path: Path) -> None:
    """``[uplink] broker_autosave_s``: the broker's autosave interval, which decides when a
    reconnect may skip ``online`` (docs/uplink-protocol.md section 3); 60 s by default, as
    receiver/mosquitto/mosquitto.conf sets it; a whole number of seconds from 1 to 3600."""
    from agent.daemon import _load_uplink
    from agent.uplink.link import MqttLink

    key = Ed25519PrivateKey.generate()
    signing, service = tmp_path / "box-signing.pem", tmp_path / "service.pub"
    signing.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    service.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    base = (
        f'[uplink]\nhost = "h"\nbox_id = "b"\nca_file = "/a"\ncert_file = "/a"\n'
        f'key_file = "/a"\nsigning_key_file = "{signing}"\nservice_key_file = "{service}"\n'
    )

    def autosave_of(extra: str) -> int:
        cfg = AgentConfig.load(_write(tmp_path, base + extra), state_dir=tmp_path)
        link = _load_uplink(cfg, buffer=None).link
        assert isinstance(link, MqttLink)
        return link.cfg.broker_autosave_s

    conf = Path(__file__).parents[1] / "receiver" / "mosquitto" / "mosquitto.conf"
    (line,) = [x for x in conf.read_text().splitlines() if x.startswith("autosave_interval ")]
    assert autosave_of("") == int(line.split()[1]) == 60  # the production broker's
    assert autosave_of("broker_autosave_s = 1\n") == 1
    for bad in ('"60"', "0", "3601", "60.5"):
        with pytest.raises(ConfigError) as err:
            AgentConfig.load(_write(tmp_path, base + f"broker_autosave_s = {bad}\n"))
        assert [p.split(":")[0] for p in _problems(err)] == ["uplink.broker_autosave_s"]

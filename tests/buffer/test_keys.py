"""Key sources: the key file is never followed, waited on or read without a bound; a KEK sealed
to a TPM 2.0 (swtpm here) opens the store on its own box only; the unit's credential lines
follow the configured source."""

from __future__ import annotations

import hmac
import os
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hw_mocks.synthetic import ReadingFactory
from hypothesis import given
from hypothesis import strategies as st

from agent.buffer import Buffer, BufferConfig, CredentialKeySource, FileKeySource
from agent.buffer import keys as keymod
from agent.errors import KeyLostError, KeyUnavailableError, RowAuthenticationError

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "dho-agent.service"


# -- the key file -------------------------------------------------------------------------


@pytest.fixture
def kek_path(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d / "buffer.kek"


def _make(kek_path: Path, kind: str, target_dir: Path) -> Callable[[], None]:
    """Put something that is not a proper key file at ``kek_path``; returns a check that
    whatever it points at was left untouched."""
    if kind == "symlink to /dev/zero":
        before = os.stat("/dev/zero")
        os.symlink("/dev/zero", kek_path)
        return lambda: _same(os.stat("/dev/zero"), before)
    if kind == "symlink to a key-sized file":
        target = target_dir / "elsewhere"
        target.write_bytes(os.urandom(32))
        target.chmod(0o644)
        os.symlink(target, kek_path)
        return lambda: _same_mode(target, 0o644)
    if kind == "dangling symlink":
        os.symlink(target_dir / "nothing-here", kek_path)
        return lambda: _absent(target_dir / "nothing-here")
    if kind == "fifo":
        os.mkfifo(kek_path, 0o600)
        return lambda: None
    if kind == "character device":
        os.mknod(kek_path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # another /dev/zero
        return lambda: _same_mode(kek_path, 0o644)
    if kind == "directory":
        kek_path.mkdir(mode=0o700)
        return lambda: None
    if kind == "hard link":
        other = target_dir / "other-name"
        other.write_bytes(os.urandom(32))
        other.chmod(0o600)
        os.link(other, kek_path)
        return lambda: None
    if kind.startswith("size "):
        n = int(kind.split()[1])
        with open(kek_path, "wb") as f:
            f.truncate(n)  # sparse: a bounded read never touches 1 GiB
        kek_path.chmod(0o600)
        return lambda: None
    if kind == "another owner":
        kek_path.write_bytes(os.urandom(32))
        kek_path.chmod(0o600)
        os.chown(kek_path, 54321, 54321)
        return lambda: None
    raise AssertionError(kind)


def _same(a: os.stat_result, b: os.stat_result) -> None:
    assert (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid)


def _same_mode(p: Path, mode: int) -> None:
    assert stat.S_IMODE(os.lstat(p).st_mode) == mode


def _absent(p: Path) -> None:
    assert not p.exists()


REFUSED = [
    ("symlink to /dev/zero", "symbolic link"),
    ("symlink to a key-sized file", "symbolic link"),
    ("dangling symlink", "symbolic link"),
    ("fifo", "FIFO"),
    ("character device", "character device"),
    ("directory", "directory"),
    ("hard link", "2 hard links"),
    ("size 0", "0 bytes"),
    ("size 31", "31 bytes"),
    ("size 33", "33 bytes"),
    ("size 1073741824", "1073741824 bytes"),
    ("another owner", "owned by uid 54321"),
]


@pytest.mark.parametrize(("kind", "message"), REFUSED, ids=[k for k, _ in REFUSED])
def test_anything_but_a_private_key_file_is_refused_and_left_untouched(
    kek_path: Path, tmp_path: Path, kind: str, message: str
) -> None:
    if os.geteuid() != 0 and kind in ("character device", "another owner"):
        pytest.skip("making a device node or giving a file away needs root")
    untouched = _make(kek_path, kind, tmp_path)
    source = FileKeySource(kek_path)
    result: list[BaseException] = []

    def load() -> None:
        try:
            source.load(create=True)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "opening the key blocked"  # a FIFO must not be waited on
    assert len(result) == 1, result
    assert isinstance(result[0], KeyUnavailableError), result
    assert message in str(result[0])
    assert not isinstance(result[0], KeyLostError)  # not "lost": the store is not set aside
    untouched()
    assert not source.permissions_fixed


def test_a_refused_key_file_fails_the_open_and_sets_nothing_aside(
    kek_path: Path, tmp_path: Path, factory: ReadingFactory
) -> None:
    store = kek_path.parent / "buffer.db"
    b = Buffer.open(store, FileKeySource(kek_path), config=BufferConfig(reserve_bytes=0))
    b.append([factory.bp()])
    b.close()
    kek = kek_path.read_bytes()
    kek_path.unlink()
    target = tmp_path / "planted"
    target.write_bytes(kek)
    os.symlink(target, kek_path)
    with pytest.raises(KeyUnavailableError, match="symbolic link"):
        Buffer.open(store, FileKeySource(kek_path), config=BufferConfig(reserve_bytes=0))
    assert not [p for p in kek_path.parent.iterdir() if ".set-aside-" in p.name]


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o4600, 0o604])
def test_a_key_file_open_to_others_is_used_tightened_and_reported(
    kek_path: Path, mode: int
) -> None:
    key = FileKeySource(kek_path).load(create=True)
    os.chmod(kek_path, mode)
    source = FileKeySource(kek_path)
    assert source.load(create=False) == key
    assert stat.S_IMODE(kek_path.stat().st_mode) == 0o600
    assert source.permissions_fixed


def test_destroy_never_writes_through_a_link(kek_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"x" * 32)
    os.symlink(target, kek_path)
    FileKeySource(kek_path).destroy()
    assert target.read_bytes() == b"x" * 32
    assert not kek_path.is_symlink()


def test_a_new_key_file_is_private_and_exactly_32_bytes(kek_path: Path) -> None:
    key = FileKeySource(kek_path).load(create=True)
    st = kek_path.stat()
    assert (len(key), st.st_size, stat.S_IMODE(st.st_mode), st.st_uid) == (
        32,
        32,
        0o600,
        os.geteuid(),
    )


def test_a_credential_is_read_with_the_same_checks(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (tmp_path / "real").write_bytes(os.urandom(32))
    os.symlink(tmp_path / "real", creds / "dho-buffer-kek")
    with pytest.raises(KeyUnavailableError, match="symbolic link"):
        CredentialKeySource("dho-buffer-kek", creds).load(create=False)
    (creds / "dho-buffer-kek").unlink()
    (creds / "dho-buffer-kek").write_bytes(os.urandom(32))
    (creds / "dho-buffer-kek").chmod(0o400)
    assert len(CredentialKeySource("dho-buffer-kek", creds).load(create=False)) == 32


# -- the unit's credential lines ----------------------------------------------------------


def test_the_base_unit_asks_for_no_credential() -> None:
    text = UNIT.read_text()
    assert not [
        ln for ln in text.splitlines() if ln.startswith(("LoadCredential", "SetCredential"))
    ]


@pytest.mark.parametrize(
    ("spec", "lines"),
    [
        ("file", ()),
        (
            "credential:dho-buffer-kek",
            ("LoadCredentialEncrypted=dho-buffer-kek:/etc/credstore.encrypted/dho-buffer-kek",),
        ),
        (
            "tpm2",
            ("LoadCredentialEncrypted=dho-buffer-kek:/etc/credstore.encrypted/dho-buffer-kek",),
        ),
        ("tpm2:box-kek", ("LoadCredentialEncrypted=box-kek:/etc/credstore.encrypted/box-kek",)),
    ],
)
def test_the_unit_drop_in_has_exactly_the_lines_the_configured_source_needs(
    tmp_path: Path, spec: str, lines: tuple[str, ...]
) -> None:
    from agent.config import key_source_for

    source = key_source_for(spec, tmp_path)
    assert keymod.unit_lines(source) == lines
    dropin = keymod.unit_dropin(source)
    body = [ln for ln in dropin.splitlines() if ln and not ln.startswith("#")]
    assert body == ["[Service]", *lines]
    if lines and shutil.which("systemd-analyze"):
        d = tmp_path / "dho-agent.service.d"
        d.mkdir()
        (d / "50-buffer-key.conf").write_text(dropin)
        shutil.copy(UNIT, tmp_path / "dho-agent.service")
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", str(tmp_path / "dho-agent.service")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "LoadCredentialEncrypted" not in out.stderr  # the directive parses


def test_an_unknown_key_source_is_a_config_error(tmp_path: Path) -> None:
    from agent.config import key_source_for
    from agent.errors import ConfigError

    for bad in ("tpm3", "credential:", "tpm2:", "file:x"):
        with pytest.raises(ConfigError, match="tpm2"):
            key_source_for(bad, tmp_path)


# -- a KEK sealed to a TPM 2.0 ----------------------------------------------------------------


def _free_port_pair() -> int:
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
        if port < 65535:
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no free port pair")


def _tpm_unavailable() -> str | None:
    for prog in ("swtpm", "systemd-creds"):
        if shutil.which(prog) is None:
            return (
                f"{prog} is not installed (scripts/ensure-system-packages.sh installs it as root)"
            )
    libs = [p for d in ("/usr/lib", "/lib") for p in Path(d).glob("*/libtss2-tcti-swtpm.so.0")]
    if not libs:
        return "libtss2-tcti-swtpm0 is not installed (systemd-creds cannot reach swtpm)"
    return None


class Tpm:
    """A software TPM 2.0 (swtpm) on loopback, as systemd's TPM device string."""

    def __init__(self, state: Path) -> None:
        state.mkdir()
        self.log = state.with_suffix(".log")
        self._logf = self.log.open("wb")
        self.port = _free_port_pair()
        self.proc = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={state}",
                "--server",
                f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._logf,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._logf.close()
                raise RuntimeError(f"swtpm exited: {self.log.read_text()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("swtpm did not start listening")
        self.device = f"swtpm:host=127.0.0.1,port={self.port}"

    def flush(self) -> None:
        """Flush loaded sessions and transient objects, as the kernel's resource manager
        (/dev/tpmrm0, systemd's default device) does when a client closes; raw swtpm keeps
        what each systemd-creds run left and runs out of its three session slots."""
        for kind in (0x02000000, 0x03000000, 0x80000000):
            cmd = struct.pack(">HIIIII", 0x8001, 22, 0x17A, 1, kind, 64)  # GetCapability
            resp = self._command(cmd)
            (count,) = struct.unpack(">I", resp[15:19])
            for (handle,) in struct.iter_unpack(">I", resp[19 : 19 + 4 * count]):
                self._command(struct.pack(">HIII", 0x8001, 14, 0x165, handle))  # FlushContext

    def _command(self, cmd: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(cmd)
            head = b""
            while len(head) < 10:
                part = s.recv(10 - len(head))
                assert part, "swtpm closed the connection"
                head += part
            _tag, size, rc = struct.unpack(">HII", head)
            body = b""
            while len(head) + len(body) < size:
                part = s.recv(size - len(head) - len(body))
                assert part, "swtpm closed the connection"
                body += part
        assert rc == 0, f"TPM error {rc:#x}"
        return head + body

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._logf.close()


@pytest.fixture
def tpm_factory(tmp_path: Path) -> Iterator[Callable[[str], Tpm]]:
    why = _tpm_unavailable()
    if why:
        pytest.skip(why)
    started: list[Tpm] = []

    def make(name: str) -> Tpm:
        t = Tpm(tmp_path / f"tpm-{name}")
        started.append(t)
        return t

    yield make
    for t in started:
        t.stop()


def _as_systemd_would(source: CredentialKeySource, tpm: Tpm, creds: Path) -> CredentialKeySource:
    """What LoadCredentialEncrypted= does before the agent starts: decrypt into a private
    directory, readable by the service only (the unit itself cannot start here: no PID 1)."""
    creds.mkdir(mode=0o700, exist_ok=True)
    data = keymod.unseal_credential(source.name, source.sealed_path, tpm2_device=tpm.device)
    tpm.flush()
    target = creds / source.name
    target.write_bytes(data)
    target.chmod(0o400)
    return CredentialKeySource(source.name, creds, with_key="tpm2", sealed_path=source.sealed_path)


def test_a_kek_sealed_to_the_tpm_opens_the_store_on_its_box_only(
    tmp_path: Path, tpm_factory: Callable[[str], Tpm], factory: ReadingFactory
) -> None:
    box, other_box = tpm_factory("box"), tpm_factory("other")
    card = tmp_path / "card"  # everything on the SD card: state and the sealed credential
    state, credstore = card / "var-lib-dho-gateway", card / "etc-credstore.encrypted"
    sealed = credstore / "dho-buffer-kek"
    kek = os.urandom(32)
    keymod.seal_credential("dho-buffer-kek", sealed, kek, with_key="tpm2", tpm2_device=box.device)
    box.flush()
    source = CredentialKeySource(
        "dho-buffer-kek", with_key="tpm2", sealed_path=sealed, tpm2_device=box.device
    )
    cfg = BufferConfig(reserve_bytes=0)
    under_unit = _as_systemd_would(source, box, tmp_path / "run-credentials")
    b = Buffer.open(state / "buffer.db", under_unit, config=cfg)
    readings = [factory.bp() for _ in range(20)]
    b.append(readings)
    b.close()

    # A technician's command on the box, outside the unit, unseals it itself.
    b = Buffer.open(state / "buffer.db", source, config=cfg)
    box.flush()
    assert b.stats().pending == 20
    b.close()

    # The card in another box (another TPM): the key does not unseal, the store stays shut
    # (and is not set aside: the data is not lost, the key is elsewhere).
    stolen = CredentialKeySource(
        "dho-buffer-kek", with_key="tpm2", sealed_path=sealed, tpm2_device=other_box.device
    )
    with pytest.raises(KeyUnavailableError, match="does not decrypt"):
        Buffer.open(state / "buffer.db", stolen, config=cfg)
    assert not [p for p in state.iterdir() if ".set-aside-" in p.name]
    # ... and the KEK itself is nowhere on the card.
    for p in card.rglob("*"):
        if p.is_file():
            assert kek not in p.read_bytes(), p


@pytest.mark.skipif(os.geteuid() != 0, reason="re-sealing writes the credential store (root)")
def test_kek_rotation_and_shredding_with_a_tpm_sealed_key(
    tmp_path: Path, tpm_factory: Callable[[str], Tpm], factory: ReadingFactory
) -> None:
    box = tpm_factory("box")
    sealed = tmp_path / "credstore" / "dho-buffer-kek"
    keymod.seal_credential(
        "dho-buffer-kek", sealed, os.urandom(32), with_key="tpm2", tpm2_device=box.device
    )
    box.flush()
    source = CredentialKeySource(
        "dho-buffer-kek", with_key="tpm2", sealed_path=sealed, tpm2_device=box.device
    )
    cfg = BufferConfig(reserve_bytes=0)
    b = Buffer.open(tmp_path / "state" / "buffer.db", source, config=cfg)
    box.flush()
    r = factory.bp()
    b.append([r])
    old = sealed.read_bytes()
    b.rotate_kek()  # unseals the current KEK, seals the new one
    box.flush()
    assert sealed.read_bytes() != old
    b.close()
    b = Buffer.open(tmp_path / "state" / "buffer.db", source, config=cfg)
    box.flush()
    c = b.claim()
    assert c is not None
    assert c.readings[0].id == r.id
    b.shred()
    assert not sealed.exists()


@given(st.binary(max_size=130), st.binary(max_size=300))
def test_the_prepared_hmac_is_hmac_sha256(key: bytes, msg: bytes) -> None:
    """The keyring's blind index (its HMAC with the key's blocks hashed once) is HMAC-SHA256."""
    from agent.buffer.keyring import _HmacSha256

    assert _HmacSha256(key).digest(msg) == hmac.digest(key, msg, "sha256")


@given(st.binary(max_size=130), st.binary(max_size=70), st.binary(max_size=300))
def test_a_prefixed_hmac_is_the_hmac_of_the_prefixed_message(
    key: bytes, prefix: bytes, msg: bytes
) -> None:
    """Keyring.blinder's states (a blind index's label absorbed once) give the same MAC."""
    from agent.buffer.keyring import _HmacSha256

    mac = _HmacSha256(key)
    assert mac.prefixed(prefix).digest(msg) == hmac.digest(key, prefix + msg, "sha256")
    assert mac.digest(msg) == hmac.digest(key, msg, "sha256")  # the original is unchanged


def test_sealed_rows_open_with_their_place_and_are_stored_as_blobs(
    tmp_path: Path, factory: ReadingFactory
) -> None:
    """Keyring.seal_rows (the append's sealing, blobs as bytearray): each row opens under its
    own associated data (table, seq, key, lane) and no other, and SQLite stores a BLOB."""
    from agent.buffer.keyring import aad
    from agent.buffer.keys import NONCE_BYTES

    buf = Buffer.open(tmp_path / "b.db", FileKeySource(tmp_path / "kek"))
    try:
        kr = buf.intake_keyring
        plain = [(7, 1, b"first row"), (8, 2, b""), (9, 0, os.urandom(300))]
        rows = kr.seal_rows("readings", plain)
        for (seq, lane, pt), (s, ln, key_id, blob) in zip(plain, rows, strict=True):
            assert (s, ln, key_id) == (seq, lane, kr.active)
            assert type(ln) is int
            assert kr.open("readings", seq, key_id, lane, bytes(blob)) == pt
            nonce = bytes(blob[:NONCE_BYTES])
            assert kr.seal("readings", seq, lane, pt, nonce) == bytes(blob)
            assert aad("readings", seq, key_id, lane).startswith(b"dho-buffer/v1/readings")
            with pytest.raises(RowAuthenticationError):
                kr.open("readings", seq + 1, key_id, lane, bytes(blob))
        assert len({bytes(b[:NONCE_BYTES]) for *_, b in rows}) == len(rows)
        buf.append([factory.bp()])
        kind, value = buf._conn.execute("SELECT typeof(blob), blob FROM readings").fetchone()
        assert kind == "blob"
        assert type(value) is bytes
    finally:
        buf.close()

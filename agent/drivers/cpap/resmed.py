"""ResMed S9 / AirSense 10 / AirSense 11 SD cards: identification, nights, events (pure).

Facts from ``shared/reference/serial-and-cpap.md`` section 4 (OSCAR's ResMed loader and the
real AirSense 10 card in ``shared/fixtures/resmed-airsense10``):

* a card is a folder with ``STR.edf`` (one 24-hour record per day, starting at **noon**) and
  ``DATALOG/`` (``YYYYMMDD/`` folders on the AirSense 10/11, files directly inside on the S9);
* ``Identification.tgt`` (S9, AS10: ``#KEY value`` lines) or ``Identification.json`` (AS11)
  names the machine: serial ``#SRN``, product ``#PNA``, product code ``#PCD``;
* the **sleep day** of a time before 12:00 is the previous calendar day (so a night that starts
  at 21:45 and ends at 05:44 is one day), and the DATALOG folder name is not trusted: the EDF
  header's start time decides (the real card's folder says 2024, its headers say 2025, and the
  STR record of the header's day matches the session);
* the therapy **mode number means different things on the AS11** than on the S9/AS10, so the
  model decides how ``Mode`` is read;
* the S9 writes localised signal labels (``Leak Med``, ``Mask Dur``, ``Modus`` ...), so every
  STR signal is looked up through an alias list;
* -1 (out of the signal's digital range) means "no value"; an unused day is -1 everywhere.

Everything here works on bytes and parsed :class:`~agent.drivers.cpap.edf.EdfFile` objects;
reading the card's files is :mod:`agent.drivers.cpap.card`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Final

from agent.drivers.cpap import edf
from agent.errors import CodecError

PROFILE: Final = "cpap.resmed"
MANUFACTURER: Final = "ResMed"
NOON: Final = time(12, 0)
MAX_IDENTIFICATION_BYTES: Final = 1 << 20
MINUTES_PER_DAY: Final = 1440
L_PER_S_TO_L_PER_MIN: Final = 60


class ResmedError(CodecError):
    """A ResMed card or file that cannot be used (messages carry no values)."""

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(PROFILE, message, bytes(raw[:4096]))


class NotAResmedCardError(ResmedError):
    """The folder has no ``STR.edf`` and ``DATALOG/`` (OSCAR's ``ResmedLoader::Detect``)."""


class IdentificationError(ResmedError):
    """``Identification.tgt`` / ``.json`` that does not parse or names no serial."""


# -- identification -----------------------------------------------------------------------


class ModelFamily(StrEnum):
    """Machine generations whose files differ (labels, mode numbers, layout)."""

    S9 = "s9"
    AIRSENSE10 = "airsense10"
    AIRSENSE11 = "airsense11"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Identification:
    """Who wrote the card. ``serial`` is patient-linked: never log it."""

    serial: str
    product_name: str
    product_code: str | None
    family: ModelFamily
    source: str
    """``"Identification.tgt"``, ``"Identification.json"`` or ``"edf"`` (from a file header)."""

    @property
    def model(self) -> str:
        """The product name for people (``AirSense_10_AutoSet`` -> ``AirSense 10 AutoSet``)."""
        return self.product_name.replace("_", " ").strip() or "ResMed CPAP"


def _family_from_name(name: str, json_file: bool) -> ModelFamily:
    folded = name.replace("_", "").replace(" ", "").casefold()
    if json_file or "11" in re.findall(r"(?:airsense|aircurve)(\d+)", folded):
        return ModelFamily.AIRSENSE11
    if re.search(r"(?:airsense|aircurve|lumis)10", folded):
        return ModelFamily.AIRSENSE10
    if folded.startswith("s9") or "s9" in folded:
        return ModelFamily.S9
    return ModelFamily.UNKNOWN


_SERIAL_OK: Final = re.compile(r"^[0-9A-Za-z-]{4,32}$")


def _check_serial(serial: str, raw: bytes) -> str:
    serial = serial.strip()
    if not _SERIAL_OK.match(serial):
        raise IdentificationError("the identification file names no usable serial number", raw)
    return serial


def parse_identification_tgt(data: bytes) -> Identification:
    """``Identification.tgt`` of an S9 or AirSense 10: ``#KEY value`` lines (CRLF, blanks)."""
    if len(data) > MAX_IDENTIFICATION_BYTES:
        raise IdentificationError("Identification.tgt is implausibly large", data[:256])
    fields: dict[str, str] = {}
    for line in data.decode("latin-1").splitlines():
        line = line.strip()
        if not line.startswith("#"):
            continue
        key, _, value = line[1:].partition(" ")
        fields.setdefault(key.strip().upper(), value.strip())
    if "SRN" not in fields:
        raise IdentificationError("Identification.tgt has no #SRN line", data)
    name = fields.get("PNA", "")
    return Identification(
        serial=_check_serial(fields["SRN"], data),
        product_name=name,
        product_code=fields.get("PCD") or None,
        family=_family_from_name(name, json_file=False),
        source="Identification.tgt",
    )


def parse_identification_json(data: bytes) -> Identification:
    """``Identification.json`` of an AirSense 11:
    ``FlowGenerator.IdentificationProfiles.Product.{SerialNumber, ProductCode, ProductName}``."""
    if len(data) > MAX_IDENTIFICATION_BYTES:
        raise IdentificationError("Identification.json is implausibly large", data[:256])
    try:
        doc = json.loads(data.decode("utf-8-sig"))
        product = doc["FlowGenerator"]["IdentificationProfiles"]["Product"]
        serial = str(product["SerialNumber"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise IdentificationError(
            "Identification.json does not hold FlowGenerator.IdentificationProfiles.Product."
            "SerialNumber",
            data,
        ) from None
    name = str(product.get("ProductName", "")) if isinstance(product, dict) else ""
    code = product.get("ProductCode") if isinstance(product, dict) else None
    return Identification(
        serial=_check_serial(serial, data),
        product_name=name,
        product_code=None if code is None else str(code),
        family=ModelFamily.AIRSENSE11,
        source="Identification.json",
    )


_SRN: Final = re.compile(r"\bSRN=([0-9A-Za-z-]+)")


def recording_serial(header: edf.EdfHeader) -> str | None:
    """The ``SRN=`` a ResMed EDF header carries in its recording field, if any."""
    m = _SRN.search(header.recording)
    return None if m is None else m.group(1)


# -- sleep days and modes -----------------------------------------------------------------


def sleep_day(when: datetime) -> date:
    """The sleep day of a device time: before 12:00 belongs to the previous day (noon rule)."""
    return when.date() - timedelta(days=1) if when.time() < NOON else when.date()


def noon_of(day: date) -> datetime:
    """The start of sleep day ``day`` (its noon, device time)."""
    return datetime.combine(day, NOON)


class TherapyMode(StrEnum):
    """Therapy modes, independent of how a model numbers them."""

    CPAP = "cpap"
    APAP = "apap"
    APAP_FOR_HER = "apap-for-her"
    BILEVEL_T = "bilevel-t"
    BILEVEL_S = "bilevel-s"
    BILEVEL_ST = "bilevel-st"
    VAUTO = "vauto"
    ASV = "asv"
    ASV_AUTO = "asv-auto"
    IVAPS = "ivaps"
    PAC = "pac"
    UNKNOWN = "unknown"


# OSCAR's comments in resmed_loader.cpp (reference section 4.3).
_MODES_S9_AS10: Final[Mapping[int, TherapyMode]] = {
    0: TherapyMode.CPAP,
    1: TherapyMode.APAP,
    2: TherapyMode.BILEVEL_T,
    3: TherapyMode.BILEVEL_S,
    4: TherapyMode.BILEVEL_ST,
    5: TherapyMode.BILEVEL_ST,
    6: TherapyMode.VAUTO,
    7: TherapyMode.ASV,
    8: TherapyMode.ASV_AUTO,
    9: TherapyMode.IVAPS,
    10: TherapyMode.PAC,
    11: TherapyMode.APAP_FOR_HER,
}
_MODES_AS11: Final[Mapping[int, TherapyMode]] = {
    1: TherapyMode.APAP,
    2: TherapyMode.APAP_FOR_HER,
    3: TherapyMode.CPAP,
    4: TherapyMode.BILEVEL_S,
    6: TherapyMode.ASV,
    7: TherapyMode.ASV_AUTO,
    8: TherapyMode.VAUTO,
}


def therapy_mode(number: int, family: ModelFamily) -> TherapyMode:
    """What the STR ``Mode`` number means on this model (``UNKNOWN`` when it cannot be told)."""
    if family is ModelFamily.AIRSENSE11:
        return _MODES_AS11.get(number, TherapyMode.UNKNOWN)
    if family in (ModelFamily.S9, ModelFamily.AIRSENSE10):
        return _MODES_S9_AS10.get(number, TherapyMode.UNKNOWN)
    return TherapyMode.UNKNOWN


# -- STR.edf ------------------------------------------------------------------------------

# Canonical (AirSense 10) label -> every spelling seen on S9/AS10/AS11 cards (reference
# section 4.2 quirk 5 and 4.3; OSCAR's resmed_codes alias lists).
STR_LABELS: Final[Mapping[str, tuple[str, ...]]] = {
    "Date": ("Date",),
    "MaskOn": ("MaskOn", "Mask On"),
    "MaskOff": ("MaskOff", "Mask Off"),
    "MaskEvents": ("MaskEvents", "Mask Events"),
    "Duration": ("Duration", "Mask Dur"),
    "Mode": ("Mode", "Modus", "Funktion", "Mod"),
    "AHI": ("AHI",),
    "AI": ("AI",),
    "HI": ("HI",),
    "OAI": ("OAI",),
    "CAI": ("CAI",),
    "UAI": ("UAI",),
    "RIN": ("RIN",),
    "CSR": ("CSR",),
    "Leak.50": ("Leak.50", "Leak Med"),
    "Leak.95": ("Leak.95", "Leak 95"),
    "Leak.Max": ("Leak.Max", "Leak Max"),
    "MaskPress.50": ("MaskPress.50",),
    "MaskPress.95": ("MaskPress.95",),
    "MaskPress.Max": ("MaskPress.Max",),
    "S.C.Press": ("S.C.Press", "Set Pressure", "Eingest. Druck"),
    "S.C.StartPress": ("S.C.StartPress",),
    "S.AS.MinPress": ("S.AS.MinPress",),
    "S.AS.MaxPress": ("S.AS.MaxPress",),
    "S.AS.StartPress": ("S.AS.StartPress",),
    "S.EPR.EPREnable": ("S.EPR.EPREnable",),
    "S.EPR.Level": ("S.EPR.Level",),
    "S.RampEnable": ("S.RampEnable",),
    "S.RampTime": ("S.RampTime",),
}

_LEAK_SIGNALS: Final = frozenset({"Leak.50", "Leak.95", "Leak.Max"})


@dataclass(frozen=True, slots=True)
class MaskInterval:
    """One mask-on period (device time)."""

    on: datetime
    off: datetime

    @property
    def minutes(self) -> int:
        """Length in whole minutes (the STR resolution)."""
        return int((self.off - self.on).total_seconds()) // 60


@dataclass(frozen=True, slots=True)
class Settings:
    """Pressure and comfort settings in effect that day (cmH2O, minutes); ``None``: not set
    or not applicable to the mode."""

    cpap_pressure: Decimal | None = None
    apap_min_pressure: Decimal | None = None
    apap_max_pressure: Decimal | None = None
    start_pressure: Decimal | None = None
    epr_level: Decimal | None = None
    ramp_time_min: Decimal | None = None


@dataclass(frozen=True, slots=True)
class StrDay:
    """One STR.edf record: the machine's own summary of one sleep day.

    Leak values are converted from the card's L/s to L/min (exactly: times 60), the unit the
    clinic reads. Everything else keeps the card's unit (minutes, events/h, cmH2O).
    """

    day: date
    record: int
    raw: bytes
    """The record's bytes as on the card (with its Crc16), kept for audit."""
    verified: bool
    """Its Crc16 matched."""
    usage_min: Decimal | None
    mask_intervals: tuple[MaskInterval, ...]
    mask_events: Decimal | None
    mode_number: int | None
    mode: TherapyMode | None
    ahi: Decimal | None
    ai: Decimal | None
    hi: Decimal | None
    oai: Decimal | None
    cai: Decimal | None
    uai: Decimal | None
    rin: Decimal | None
    csr_min: Decimal | None
    leak50_l_min: Decimal | None
    leak95_l_min: Decimal | None
    leak_max_l_min: Decimal | None
    mask_press50: Decimal | None
    mask_press95: Decimal | None
    mask_press_max: Decimal | None
    settings: Settings
    problems: tuple[str, ...] = ()

    @property
    def used(self) -> bool:
        """The machine delivered therapy that day."""
        return bool(self.mask_intervals) or (self.usage_min is not None and self.usage_min > 0)

    @property
    def start(self) -> datetime:
        """Noon of the day (device time): where the record's mask times count from."""
        return noon_of(self.day)


class _Record:
    """Value access for one STR record, by canonical label."""

    def __init__(self, file: edf.EdfFile, index: int, found: Mapping[str, int | None]) -> None:
        self.file = file
        self.index = index
        self.found = found

    def _signal(self, key: str) -> edf.SignalHeader | None:
        i = self.found[key]
        return None if i is None else self.file.header.signals[i]

    def digital(self, key: str) -> list[int]:
        i = self.found[key]
        if i is None:
            return []
        return list(self.file.digital(i, self.index))

    def value(self, key: str) -> Decimal | None:
        sig = self._signal(key)
        raw = self.digital(key)
        if sig is None or not raw or not sig.in_range(raw[0]):
            return None
        factor = L_PER_S_TO_L_PER_MIN if key in _LEAK_SIGNALS else 1
        try:
            return sig.decimal_scale(factor).decimal(raw[0])
        except edf.EdfHeaderError:
            return None

    def integer(self, key: str) -> int | None:
        v = self.value(key)
        return None if v is None or v != v.to_integral_value() else int(v)


def _settings(rec: _Record, mode: TherapyMode | None) -> Settings:
    ramp_on = rec.integer("S.RampEnable")
    ramp = rec.value("S.RampTime") if ramp_on not in (None, 0) else None
    epr_on = rec.integer("S.EPR.EPREnable")
    epr = rec.value("S.EPR.Level") if epr_on not in (None, 0) else None
    if mode is TherapyMode.CPAP:
        return Settings(
            cpap_pressure=rec.value("S.C.Press"),
            start_pressure=rec.value("S.C.StartPress"),
            epr_level=epr,
            ramp_time_min=ramp,
        )
    if mode in (TherapyMode.APAP, TherapyMode.APAP_FOR_HER):
        return Settings(
            apap_min_pressure=rec.value("S.AS.MinPress"),
            apap_max_pressure=rec.value("S.AS.MaxPress"),
            start_pressure=rec.value("S.AS.StartPress"),
            epr_level=epr,
            ramp_time_min=ramp,
        )
    # Bilevel and ASV settings live in other S.* signals not covered by the reference.
    return Settings(ramp_time_min=ramp)


def _mask_intervals(rec: _Record, start: datetime) -> tuple[tuple[MaskInterval, ...], list[str]]:
    ons, offs = rec.digital("MaskOn"), rec.digital("MaskOff")
    problems: list[str] = []
    out: list[MaskInterval] = []
    for slot, (on, off) in enumerate(zip(ons, offs, strict=False)):
        if on == -1 and off == -1:
            continue
        if not (0 <= on <= MINUTES_PER_DAY and 0 <= off <= MINUTES_PER_DAY):
            problems.append(f"mask slot {slot}: on/off outside 0..1440 minutes")
            continue
        if off < on:
            problems.append(f"mask slot {slot}: off before on")
            continue
        out.append(MaskInterval(start + timedelta(minutes=on), start + timedelta(minutes=off)))
    return tuple(out), problems


def decode_str(file: edf.EdfFile, family: ModelFamily) -> tuple[StrDay, ...]:
    """Every record of a parsed ``STR.edf`` as a :class:`StrDay` (unused days included).

    Records whose Crc16 failed come out with ``verified=False`` and no values; records the
    file does not hold (truncated) are absent. The day of a record is its ``Date`` signal
    (days since 1970-01-01) when valid, else the header's start plus the record number.
    """
    header = file.header
    if header.find("Duration", "Mask Dur") is None and header.find("Date") is None:
        raise ResmedError("STR.edf has neither a Date nor a Duration signal", file.data[:0])
    first = sleep_day(header.start)
    found = {key: header.find(*names) for key, names in STR_LABELS.items()}
    out: list[StrDay] = []
    for r in range(file.record_count):
        rec = _Record(file, r, found)
        raw = file.record(r)
        day = first + timedelta(days=r)
        problems: list[str] = []
        stamp = rec.integer("Date")
        if stamp is not None:
            by_signal = date(1970, 1, 1) + timedelta(days=stamp)
            if by_signal != day:
                problems.append("Date signal and record position disagree; Date used")
                day = by_signal
        if r in file.bad_records:
            out.append(_unverified(day, r, raw))
            continue
        mode_number = rec.integer("Mode")
        mode = None if mode_number is None else therapy_mode(mode_number, family)
        intervals, mask_problems = _mask_intervals(rec, noon_of(day))
        problems += mask_problems
        out.append(
            StrDay(
                day=day,
                record=r,
                raw=raw,
                verified=file.crc_checked,
                usage_min=rec.value("Duration"),
                mask_intervals=intervals,
                mask_events=rec.value("MaskEvents"),
                mode_number=mode_number,
                mode=mode,
                ahi=rec.value("AHI"),
                ai=rec.value("AI"),
                hi=rec.value("HI"),
                oai=rec.value("OAI"),
                cai=rec.value("CAI"),
                uai=rec.value("UAI"),
                rin=rec.value("RIN"),
                csr_min=rec.value("CSR"),
                leak50_l_min=rec.value("Leak.50"),
                leak95_l_min=rec.value("Leak.95"),
                leak_max_l_min=rec.value("Leak.Max"),
                mask_press50=rec.value("MaskPress.50"),
                mask_press95=rec.value("MaskPress.95"),
                mask_press_max=rec.value("MaskPress.Max"),
                settings=_settings(rec, mode),
                problems=tuple(problems),
            )
        )
    return tuple(out)


def _unverified(day: date, record: int, raw: bytes) -> StrDay:
    return StrDay(
        day=day,
        record=record,
        raw=raw,
        verified=False,
        usage_min=None,
        mask_intervals=(),
        mask_events=None,
        mode_number=None,
        mode=None,
        ahi=None,
        ai=None,
        hi=None,
        oai=None,
        cai=None,
        uai=None,
        rin=None,
        csr_min=None,
        leak50_l_min=None,
        leak95_l_min=None,
        leak_max_l_min=None,
        mask_press50=None,
        mask_press95=None,
        mask_press_max=None,
        settings=Settings(),
        problems=("Crc16 failed: values not used",),
    )


# -- DATALOG files ------------------------------------------------------------------------


class FileKind(StrEnum):
    """The kinds of DATALOG file (AS11 ``SA2`` is read as ``SAD``, as OSCAR does)."""

    BRP = "BRP"
    PLD = "PLD"
    SAD = "SAD"
    EVE = "EVE"
    CSL = "CSL"

    @property
    def is_annotations(self) -> bool:
        """EVE and CSL hold EDF+D annotations, the others sampled signals."""
        return self in (FileKind.EVE, FileKind.CSL)


_FILE_NAME: Final = re.compile(r"^(\d{8})_(\d{6})_(BRP|PLD|SAD|SA2|EVE|CSL)\.edf$", re.IGNORECASE)


def file_kind(name: str) -> FileKind | None:
    """The kind of a DATALOG file from its name, or ``None`` for anything else."""
    m = _FILE_NAME.match(name)
    if m is None:
        return None
    kind = m.group(3).upper()
    return FileKind.SAD if kind == "SA2" else FileKind(kind)


def is_datalog_path(path: str) -> bool:
    """``DATALOG/<file>`` (S9) or ``DATALOG/YYYYMMDD/<file>`` (AS10/11) with a known kind."""
    parts = path.split("/")
    if not parts or parts[0].upper() != "DATALOG" or not 2 <= len(parts) <= 3:
        return False
    if len(parts) == 3 and not re.fullmatch(r"\d{8}", parts[1]):
        return False
    return file_kind(parts[-1]) is not None


# Detail signals: canonical name -> labels on AS10/AS11 and on the S9 (reference 4.4).
DETAIL_LABELS: Final[Mapping[FileKind, Mapping[str, tuple[str, ...]]]] = {
    FileKind.BRP: {
        "flow": ("Flow.40ms", "Flow"),
        "mask_pressure": ("Press.40ms", "Mask Pres"),
    },
    FileKind.PLD: {
        "mask_pressure": ("MaskPress.2s", "Mask Pres"),
        "therapy_pressure": ("Press.2s", "Therapy Pres"),
        "epr_pressure": ("EprPress.2s",),
        "leak": ("Leak.2s", "Leak", "Leck", "Fuites", "Fuite", "Fuga", "Läck"),
        "resp_rate": ("RespRate.2s", "RR"),
        "tidal_volume": ("TidVol.2s", "Vt"),
        "minute_vent": ("MinVent.2s", "MV"),
        "snore": ("Snore.2s", "Snore"),
        "flow_limitation": ("FlowLim.2s", "FFL Index"),
    },
    FileKind.SAD: {
        "pulse": ("Pulse.1s", "Pulse"),
        "spo2": ("SpO2.1s", "SpO2"),
    },
}


@dataclass(frozen=True, slots=True)
class SessionFile:
    """One DATALOG file placed in its night."""

    path: str
    """Path relative to the card root, ``/``-separated."""
    kind: FileKind
    start: datetime
    """The file's start from its EDF header (device time)."""
    night: date

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.rsplit("/", 1)[-1]


def place_file(path: str, header: edf.EdfHeader) -> SessionFile:
    """The night a DATALOG file belongs to, from its header's start (noon rule)."""
    kind = file_kind(path.rsplit("/", 1)[-1])
    if kind is None:
        raise ResmedError("not a DATALOG file name (YYYYMMDD_HHMMSS_KIND.edf)")
    return SessionFile(path, kind, header.start, sleep_day(header.start))


# -- events -------------------------------------------------------------------------------


class EventKind(StrEnum):
    """Respiratory events a ResMed EVE/CSL file annotates (reference section 4.5)."""

    OBSTRUCTIVE_APNEA = "obstructive_apnea"
    CENTRAL_APNEA = "central_apnea"
    HYPOPNEA = "hypopnea"
    APNEA = "apnea"
    """An apnoea the machine could not classify."""
    AROUSAL = "arousal"
    """Respiratory effort-related arousal (RERA)."""
    DESATURATION = "desaturation"
    CSR_START = "csr_start"
    CSR_END = "csr_end"


EVENT_LABELS: Final[Mapping[str, EventKind]] = {
    "obstructive apnea": EventKind.OBSTRUCTIVE_APNEA,
    "central apnea": EventKind.CENTRAL_APNEA,
    "hypopnea": EventKind.HYPOPNEA,
    "apnea": EventKind.APNEA,
    "arousal": EventKind.AROUSAL,
    "spo2 desaturation": EventKind.DESATURATION,
    "csr start": EventKind.CSR_START,
    "csr end": EventKind.CSR_END,
}
_IGNORED_LABELS: Final = frozenset({"recording starts"})


@dataclass(frozen=True, slots=True)
class Event:
    """One annotated event: when the machine stamped it and for how long.

    ResMed most likely stamps an event at its *end* (reference 4.5, single source), so
    ``at`` is kept as written: file start plus onset.
    """

    kind: EventKind
    at: datetime
    duration_s: Decimal | None


@dataclass(frozen=True, slots=True)
class EventCounts:
    """Events of one night, counted over the annotation files that verified."""

    counts: Mapping[EventKind, int]
    unknown_labels: int
    """Annotations with a label not in :data:`EVENT_LABELS` (counted, not named in logs)."""
    files: int

    def count(self, kind: EventKind) -> int:
        """How many events of ``kind``."""
        return self.counts.get(kind, 0)


def read_events(file: edf.EdfFile) -> tuple[tuple[Event, ...], int]:
    """The events of an EVE/CSL file's verified records, and the count of unknown labels.

    Raises :class:`~agent.drivers.cpap.edf.TalError` for a malformed annotation record.
    """
    if file.header.annotation_signal is None:
        raise ResmedError("annotation file has no EDF Annotations signal")
    events: list[Event] = []
    unknown = 0
    start = file.header.start
    for r in file.good_records:
        for tal in file.annotations(r):
            for text in tal.texts:
                label = " ".join(text.split()).casefold()
                if not label or label in _IGNORED_LABELS:
                    continue
                kind = EVENT_LABELS.get(label)
                if kind is None:
                    unknown += 1
                    continue
                at = start + timedelta(microseconds=int(tal.onset * 1_000_000))
                events.append(Event(kind, at, tal.duration))
    return tuple(events), unknown


def count_events(files: Iterable[edf.EdfFile]) -> EventCounts:
    """Counts per event kind over several annotation files (one night's EVE and CSL)."""
    counts: dict[EventKind, int] = {}
    unknown = n = 0
    for f in files:
        events, extra = read_events(f)
        unknown += extra
        n += 1
        for e in events:
            counts[e.kind] = counts.get(e.kind, 0) + 1
    return EventCounts(counts, unknown, n)


# -- detail signals -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DetailSignal:
    """One sampled signal of a BRP/PLD/SAD file, located and scaled."""

    name: str
    index: int
    header: edf.SignalHeader
    interval_ms: int
    scale: edf.DecimalScale
    """Exact mantissas (in the unit of :data:`DETAIL_UNITS`) from digital values."""


# Canonical detail signal -> (unit we report, factor from the card's unit).
DETAIL_UNITS: Final[Mapping[str, tuple[str, Fraction]]] = {
    "flow": ("L/min", Fraction(L_PER_S_TO_L_PER_MIN)),
    "mask_pressure": ("cm[H2O]", Fraction(1)),
    "therapy_pressure": ("cm[H2O]", Fraction(1)),
    "epr_pressure": ("cm[H2O]", Fraction(1)),
    "leak": ("L/min", Fraction(L_PER_S_TO_L_PER_MIN)),
    "resp_rate": ("/min", Fraction(1)),
    "tidal_volume": ("mL", Fraction(1000)),
    "minute_vent": ("L/min", Fraction(1)),
    "snore": ("1", Fraction(1)),
    "flow_limitation": ("1", Fraction(1)),
    "pulse": ("/min", Fraction(1)),
    "spo2": ("%", Fraction(1)),
}


def detail_signals(kind: FileKind, header: edf.EdfHeader) -> tuple[DetailSignal, ...]:
    """The known signals of a BRP/PLD/SAD file with their sample interval and exact scale.

    A signal whose interval is not a whole number of milliseconds, or whose scale is not
    exact, is left out (never rounded).
    """
    out: list[DetailSignal] = []
    for name, labels in DETAIL_LABELS.get(kind, {}).items():
        i = header.find(*labels)
        if i is None:
            continue
        sig = header.signals[i]
        if sig.samples_per_record <= 0:
            continue
        interval = header.record_duration * 1000 / sig.samples_per_record
        if interval <= 0 or interval != interval.to_integral_value():
            continue
        try:
            scale = sig.decimal_scale(DETAIL_UNITS[name][1])
        except edf.EdfHeaderError:
            continue
        out.append(DetailSignal(name, i, sig, int(interval), scale))
    return tuple(out)


# -- the card as nights -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Night:
    """Everything the card holds about one sleep day."""

    day: date
    summary: StrDay | None
    files: tuple[SessionFile, ...] = ()
    events: EventCounts | None = None
    """``None`` when the night has no annotation file that verified."""
    problems: tuple[str, ...] = field(default=())


def assemble_nights(
    days: Sequence[StrDay],
    files: Sequence[SessionFile],
    events: Mapping[date, EventCounts] | None = None,
) -> tuple[Night, ...]:
    """Nights with use (or with DATALOG files), oldest first."""
    by_day: dict[date, StrDay] = {d.day: d for d in days if d.used}
    by_night: dict[date, list[SessionFile]] = {}
    for f in files:
        by_night.setdefault(f.night, []).append(f)
    out = []
    for day in sorted(set(by_day) | set(by_night)):
        out.append(
            Night(
                day=day,
                summary=by_day.get(day),
                files=tuple(sorted(by_night.get(day, []), key=lambda f: (f.start, f.path))),
                events=(events or {}).get(day),
            )
        )
    return tuple(out)

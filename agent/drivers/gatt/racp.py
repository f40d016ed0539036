"""Record Access Control Point 0x2A52: requests and responses, both directions.

Frame: ``op_code(uint8) operator(uint8) operand(...)`` (``shared/reference/ble-gatt.md``
section 1.6, from Spezi ``RecordAccess*.swift`` and Nordic
``RecordAccessControlPointData.java`` / ``RecordAccessControlPointDataCallbackTest.java``).

Requests (central -> device): op 0x01 report stored records, 0x02 delete, 0x03 abort (operator
null), 0x04 report number of stored records, 0x07 combined report. Operators: 0x01 all,
0x02 less than or equal, 0x03 greater than or equal, 0x04 within range (inclusive), 0x05
first, 0x06 last. Filtered operators carry a filter-type byte then one value (two for a
range): 0x01 sequence number (uint16), 0x02 user-facing time (a 7-byte Date Time:
**[inferred]**, no device in the survey uses it), 0x04 Omron's vendor sequence-number filter
(uint16, ble-gatt.md section 2.3).

Responses (device -> central, by indication): ``06 00 <request op> <response code>``,
``05 00 <count>`` (number of stored records) and ``08 00 <count>`` (combined report). The
count is a uint16 in the specification; like Nordic's parser, 1- and 4-byte counts are accepted
too and their width kept, so encoding reproduces them.

Request and response op codes do not overlap, so :func:`decode_racp` tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias

from agent.drivers.gatt._wire import Cursor, fail, require_min_length, uint
from agent.drivers.gatt.times import DATE_TIME_LEN, DateTime, date_time_bytes, read_date_time

PROFILE_RACP: Final = "ble.racp"


class RacpOpCode(IntEnum):
    """RACP op codes."""

    REPORT_STORED_RECORDS = 0x01
    DELETE_STORED_RECORDS = 0x02
    ABORT_OPERATION = 0x03
    REPORT_NUMBER_OF_STORED_RECORDS = 0x04
    NUMBER_OF_STORED_RECORDS_RESPONSE = 0x05
    RESPONSE_CODE = 0x06
    COMBINED_REPORT = 0x07
    COMBINED_REPORT_RESPONSE = 0x08


REQUEST_OP_CODES: Final = frozenset(
    {
        RacpOpCode.REPORT_STORED_RECORDS,
        RacpOpCode.DELETE_STORED_RECORDS,
        RacpOpCode.ABORT_OPERATION,
        RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS,
        RacpOpCode.COMBINED_REPORT,
    }
)


class RacpOperator(IntEnum):
    """RACP operators."""

    NULL = 0x00
    ALL_RECORDS = 0x01
    LESS_THAN_OR_EQUAL = 0x02
    GREATER_THAN_OR_EQUAL = 0x03
    WITHIN_RANGE = 0x04
    FIRST_RECORD = 0x05
    LAST_RECORD = 0x06


class RacpFilterType(IntEnum):
    """Filter types for the filtered operators."""

    SEQUENCE_NUMBER = 0x01
    USER_FACING_TIME = 0x02
    OMRON_SEQUENCE_NUMBER = 0x04


class RacpResponseValue(IntEnum):
    """Response codes carried by op 0x06."""

    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_OPERATOR = 0x03
    OPERATOR_NOT_SUPPORTED = 0x04
    INVALID_OPERAND = 0x05
    NO_RECORDS_FOUND = 0x06
    ABORT_UNSUCCESSFUL = 0x07
    PROCEDURE_NOT_COMPLETED = 0x08
    OPERAND_NOT_SUPPORTED = 0x09
    SERVER_BUSY = 0x0A


_FILTERED: Final = frozenset(
    {
        RacpOperator.LESS_THAN_OR_EQUAL,
        RacpOperator.GREATER_THAN_OR_EQUAL,
        RacpOperator.WITHIN_RANGE,
    }
)

Operand: TypeAlias = int | DateTime


@dataclass(frozen=True, slots=True)
class RacpRequest:
    """A RACP request.

    ``operand`` holds one value for ``<=``/``>=`` and two (low, high) for a range: ints for
    sequence-number filters, :class:`DateTime` for user-facing time.
    """

    op_code: RacpOpCode
    operator: RacpOperator
    filter_type: RacpFilterType | None = None
    operand: tuple[Operand, ...] = ()

    @classmethod
    def report_all(cls) -> RacpRequest:
        """``01 01``: report all stored records."""
        return cls(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.ALL_RECORDS)

    @classmethod
    def report_last(cls) -> RacpRequest:
        """``01 06``: report the last (newest) record."""
        return cls(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.LAST_RECORD)

    @classmethod
    def report_first(cls) -> RacpRequest:
        """``01 05``: report the first (oldest) record."""
        return cls(RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.FIRST_RECORD)

    @classmethod
    def report_from_sequence(
        cls, first: int, filter_type: RacpFilterType = RacpFilterType.SEQUENCE_NUMBER
    ) -> RacpRequest:
        """``01 03 <filter> <uint16>``: report records with sequence number >= ``first``."""
        return cls(
            RacpOpCode.REPORT_STORED_RECORDS,
            RacpOperator.GREATER_THAN_OR_EQUAL,
            filter_type,
            (first,),
        )

    @classmethod
    def count_all(cls) -> RacpRequest:
        """``04 01``: report the number of stored records."""
        return cls(RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS, RacpOperator.ALL_RECORDS)

    @classmethod
    def delete_all(cls) -> RacpRequest:
        """``02 01``: delete all stored records."""
        return cls(RacpOpCode.DELETE_STORED_RECORDS, RacpOperator.ALL_RECORDS)

    @classmethod
    def abort(cls) -> RacpRequest:
        """``03 00``: abort the running operation."""
        return cls(RacpOpCode.ABORT_OPERATION, RacpOperator.NULL)


@dataclass(frozen=True, slots=True)
class RacpResponse:
    """A response-code indication (op 0x06): the request it answers and the outcome.

    ``request_op_code`` and ``response_code`` are kept as raw ints: a device may answer an op
    code we do not know (``06 00 0C 02``: op 0x0C not supported).
    """

    request_op_code: int
    response_code: int

    @property
    def outcome(self) -> RacpResponseValue | None:
        """The response code as an enum member, or ``None`` for a reserved value."""
        try:
            return RacpResponseValue(self.response_code)
        except ValueError:
            return None

    @property
    def outcome_name(self) -> str:
        """e.g. ``"success"``, ``"no-records-found"``, ``"reserved-0x0b"``."""
        outcome = self.outcome
        if outcome is None:
            return f"reserved-0x{self.response_code:02x}"
        return outcome.name.lower().replace("_", "-")

    @property
    def succeeded(self) -> bool:
        """True for "success"."""
        return self.response_code == RacpResponseValue.SUCCESS


@dataclass(frozen=True, slots=True)
class RacpRecordCount:
    """A number-of-records indication (op 0x05, or 0x08 for a combined report)."""

    count: int
    op_code: RacpOpCode = RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE
    width: int = 2
    """Bytes the count took on the wire (2 by the spec; 1 and 4 seen in Nordic's tests)."""


RacpMessage: TypeAlias = RacpRequest | RacpResponse | RacpRecordCount

_COUNT_WIDTHS: Final = (1, 2, 4)


def _operand_size(filter_type: RacpFilterType) -> int:
    return DATE_TIME_LEN if filter_type is RacpFilterType.USER_FACING_TIME else 2


def decode_racp_request(data: bytes, model: str | None = None) -> RacpRequest:
    """Decode a RACP request (what a central writes; simulated devices parse it)."""
    profile = PROFILE_RACP
    require_min_length(profile, data, 2, "op code and operator")
    cur = Cursor(profile, data)
    op_raw = cur.u8("op code")
    if op_raw not in REQUEST_OP_CODES:
        raise fail(profile, data, f"op code 0x{op_raw:02X} is not a request")
    op = RacpOpCode(op_raw)
    operator_raw = cur.u8("operator")
    try:
        operator = RacpOperator(operator_raw)
    except ValueError:
        raise fail(profile, data, f"operator 0x{operator_raw:02X} is not defined") from None
    if (op is RacpOpCode.ABORT_OPERATION) != (operator is RacpOperator.NULL):
        raise fail(profile, data, "the null operator goes with abort (op 0x03) and only with abort")
    if operator not in _FILTERED:
        cur.end()
        return RacpRequest(op, operator)
    filter_raw = cur.u8("filter type")
    try:
        filter_type = RacpFilterType(filter_raw)
    except ValueError:
        raise fail(profile, data, f"filter type 0x{filter_raw:02X} is not supported") from None
    values = 2 if operator is RacpOperator.WITHIN_RANGE else 1
    size = _operand_size(filter_type)
    need = 3 + values * size
    if len(data) != need:
        raise fail(
            profile,
            data,
            f"payload is {len(data)} bytes, but operator {operator.name.lower()} with filter "
            f"{filter_type.name.lower()} requires {need} (op code 1 + operator 1 + filter 1 + "
            f"{values} x {size})",
        )
    operand: list[Operand] = []
    for i in range(values):
        what = f"operand {i + 1}"
        if filter_type is RacpFilterType.USER_FACING_TIME:
            operand.append(read_date_time(cur, what))
        else:
            operand.append(cur.u16(what))
    cur.end()
    return RacpRequest(op, operator, filter_type, tuple(operand))


def encode_racp_request(value: RacpRequest) -> bytes:
    """Encode a RACP request: ``RacpRequest.report_all()`` gives ``01 01``."""
    if value.op_code not in REQUEST_OP_CODES:
        raise ValueError(f"op code {value.op_code!r} is not a request")
    if (value.op_code is RacpOpCode.ABORT_OPERATION) != (value.operator is RacpOperator.NULL):
        raise ValueError("the null operator goes with abort and only with abort")
    out = bytes((value.op_code, value.operator))
    if value.operator not in _FILTERED:
        if value.filter_type is not None or value.operand:
            raise ValueError(f"operator {value.operator.name} takes no operand")
        return out
    if value.filter_type is None:
        raise ValueError(f"operator {value.operator.name} needs a filter type")
    values = 2 if value.operator is RacpOperator.WITHIN_RANGE else 1
    if len(value.operand) != values:
        raise ValueError(f"operator {value.operator.name} takes {values} operand value(s)")
    out += bytes((value.filter_type,))
    for item in value.operand:
        if value.filter_type is RacpFilterType.USER_FACING_TIME:
            if not isinstance(item, DateTime):
                raise ValueError("a user-facing-time filter takes DateTime operands")
            out += date_time_bytes(item)
        else:
            if not isinstance(item, int):
                raise ValueError("a sequence-number filter takes int operands")
            out += uint(item, 2, "sequence number")
    return out


def decode_racp_response(data: bytes, model: str | None = None) -> RacpResponse | RacpRecordCount:
    """Decode a RACP response indication (op 0x05, 0x06 or 0x08)."""
    profile = PROFILE_RACP
    require_min_length(profile, data, 2, "op code and operator")
    op_raw, operator = data[0], data[1]
    if op_raw not in (0x05, 0x06, 0x08):
        raise fail(profile, data, f"op code 0x{op_raw:02X} is not a response")
    if operator != RacpOperator.NULL:
        raise fail(profile, data, f"a response has the null operator, not 0x{operator:02X}")
    if op_raw == RacpOpCode.RESPONSE_CODE:
        if len(data) != 4:
            raise fail(
                profile,
                data,
                f"payload is {len(data)} bytes, but a response code requires 4 "
                "(op code 1 + operator 1 + request op code 1 + response code 1)",
            )
        return RacpResponse(request_op_code=data[2], response_code=data[3])
    width = len(data) - 2
    if width not in _COUNT_WIDTHS:
        raise fail(
            profile,
            data,
            f"payload is {len(data)} bytes, but a record count requires 4 "
            "(op code 1 + operator 1 + count 2; 3 or 6 accepted)",
        )
    return RacpRecordCount(
        count=int.from_bytes(data[2:], "little"), op_code=RacpOpCode(op_raw), width=width
    )


def encode_racp_response(value: RacpResponse | RacpRecordCount) -> bytes:
    """Encode a RACP response indication (what a simulated device sends)."""
    if isinstance(value, RacpResponse):
        return bytes(
            (
                RacpOpCode.RESPONSE_CODE,
                RacpOperator.NULL,
                *uint(value.request_op_code, 1, "request op code"),
                *uint(value.response_code, 1, "response code"),
            )
        )
    if value.op_code not in (
        RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
        RacpOpCode.COMBINED_REPORT_RESPONSE,
    ):
        raise ValueError(f"op code {value.op_code!r} does not carry a record count")
    if value.width not in _COUNT_WIDTHS:
        raise ValueError(f"count width {value.width} is not 1, 2 or 4")
    return bytes((value.op_code, RacpOperator.NULL)) + uint(value.count, value.width, "count")


def decode_racp(data: bytes, model: str | None = None) -> RacpMessage:
    """Decode any RACP frame: a request or a response, told apart by the op code."""
    require_min_length(PROFILE_RACP, data, 1, "op code")
    if data[0] in REQUEST_OP_CODES:
        return decode_racp_request(data)
    if data[0] not in (0x05, 0x06, 0x08):
        raise fail(PROFILE_RACP, data, f"op code 0x{data[0]:02X} is not defined")
    return decode_racp_response(data)


def encode_racp(value: RacpMessage) -> bytes:
    """Encode any RACP frame."""
    if isinstance(value, RacpRequest):
        return encode_racp_request(value)
    return encode_racp_response(value)

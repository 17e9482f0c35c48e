"""Canonical JSON (RFC 8785, JCS): the RFC's own examples, and properties."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errands.core.canonical import canonical_hash, canonical_json

# RFC 8785 Appendix B: IEEE 754 bit patterns and their JCS spelling.
RFC_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),  # minus zero
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS)
def test_rfc_8785_number_serialisation(bits: str, expected: str) -> None:
    assert canonical_json(_double(bits)) == expected


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_nan_and_infinity_are_refused(bits: str) -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        canonical_json({"x": _double(bits)})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (100.0, "100"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (123e-20, "1.23e-18"),
        (5.5e-7, "5.5e-7"),
        (0, "0"),
        (-0.0, "0"),
        (42, "42"),
        (-(2**53), "-9007199254740992"),
    ],
)
def test_numbers_follow_ecmascript_formatting(value: float, expected: str) -> None:
    assert canonical_json(value) == expected


def test_rfc_8785_sorting_example_orders_keys_by_utf16_code_units() -> None:
    # RFC 8785 section 3.2.3: U+1F600 (a surrogate pair, D83D DE00) sorts *before*
    # U+FB33 in UTF-16 even though its code point is larger.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    out = canonical_json(value)
    keys = list(json.loads(out))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(value) != keys  # code-point order would differ
    assert out.startswith('{"\\r":"Carriage Return","1":"One","\u0080":"Control"')


def test_rfc_8785_main_example() -> None:
    # RFC 8785 section 3.2.4 (the input as Python parses the JSON of the example)
    raw = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(raw)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ("\x00\x1f", '"\\u0000\\u001f"'),
        ("\x7f\u2028/\U0001f600é", '"\x7f\u2028/\U0001f600é"'),  # not escaped
    ],
)
def test_strings_escape_only_what_jcs_escapes(text: str, expected: str) -> None:
    assert canonical_json(text) == expected


def test_non_string_keys_and_unknown_types_are_refused() -> None:
    with pytest.raises(TypeError):
        canonical_json({1: "x"})
    with pytest.raises(TypeError):
        canonical_json({"x": {1, 2}})


def test_the_hash_is_sha256_of_the_utf8_canonical_form() -> None:
    assert canonical_hash({"b": 1, "a": [1.0, "é"]}) == canonical_hash({"a": [1, "é"], "b": 1.0})
    assert canonical_hash({"a": 1}).startswith("sha256:")
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})
    # distinct integers never collide (they are spelt exactly, not as rounded doubles)
    assert canonical_hash({"n": 2**60}) != canonical_hash({"n": 2**60 + 1})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_canonical_json_is_valid_json_of_the_same_value(value: Any) -> None:
    out = canonical_json(value)
    # (a float spelt as an integer, 1e16 as 10000000000000000, reads back equal as a float)
    assert json.loads(out, parse_int=float) == value
    assert canonical_json(json.loads(out)) == out  # idempotent


@settings(max_examples=200, deadline=None)
@given(items=st.dictionaries(st.text(), st.integers(), max_size=8))
def test_key_order_does_not_matter(items: dict[str, int]) -> None:
    assert canonical_json(dict(reversed(list(items.items())))) == canonical_json(items)


@settings(max_examples=500, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_double_round_trips_through_its_shortest_spelling(x: float) -> None:
    out = canonical_json(x)
    assert float(out) == x
    assert "+" not in out.split("e")[0] and not out.startswith("+")
    mantissa = out.split("e")[0]
    if "." in mantissa:
        assert not mantissa.endswith("0")  # no trailing zeros

"""Names of apps, process types, nodes and instances: what passes and what is refused."""

from __future__ import annotations

import pytest

from paas.common.digits import parse_digits
from paas.common.errors import InvalidInput
from paas.common.names import (
    InstanceName,
    NameError_,
    check_app_name,
    check_node_name,
    check_process_type,
)

# (check, name, accepted)
NAMES = [
    (check_app_name, "shop", True),
    (check_app_name, "my-shop-2", True),
    (check_app_name, "a" * 30, True),
    (check_app_name, "a" * 31, False),
    (check_app_name, "Shop", False),
    (check_app_name, "2shop", False),
    (check_app_name, "shop\n", False),
    (check_app_name, "shop\r\n", False),
    (check_app_name, "", False),
    (check_process_type, "web", True),
    (check_process_type, "my_type-1", True),
    (check_process_type, "w" * 63, True),
    (check_process_type, "w" * 64, False),
    (check_process_type, "web\n", False),
    (check_process_type, "-web", False),
    (check_process_type, "we b", False),
    (check_process_type, "wéb", False),
    (check_node_name, "node-1.example", True),
    (check_node_name, "node-1\n", False),
    (check_node_name, ".node", False),
]


@pytest.mark.parametrize(
    ("check", "name", "accepted"), NAMES, ids=[f"{c.__name__}-{n!r}" for c, n, _ in NAMES]
)
def test_a_name_is_checked_whole(check: object, name: str, accepted: bool) -> None:
    assert callable(check)
    if accepted:
        assert check(name) == name
    else:
        with pytest.raises(NameError_, match="invalid"):
            check(name)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("web.3", InstanceName("web", 3)),
        ("my-type.10", InstanceName("my-type", 10)),
        ("web.007", InstanceName("web", 7)),
        ("web.0", None),
        ("web.", None),
        ("web", None),
        (".3", None),
        ("web.-1", None),
        ("web.+1", None),
        ("web.3\n", None),
        ("web.\N{ARABIC-INDIC DIGIT THREE}", None),
        ("web.\N{SUPERSCRIPT TWO}", None),
        ("web.\N{FULLWIDTH DIGIT ONE}", None),
        ("web." + "9" * 5000, None),
        ("web. 3", None),
        ("web.3.1", None),
    ],
)
def test_an_instance_name_is_a_type_and_an_ascii_index(
    text: str, parsed: InstanceName | None
) -> None:
    if parsed is not None:
        assert InstanceName.parse(text) == parsed
    else:
        with pytest.raises(NameError_, match="invalid"):
            InstanceName.parse(text)


def test_name_errors_are_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        check_app_name("Nope")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0", 0),
        ("10", 10),
        ("007", 7),
        ("9" * 18, int("9" * 18)),
        ("9" * 19, None),
        ("", None),
        (" 1", None),
        ("1\n", None),
        ("+1", None),
        ("-1", None),
        ("1_000", None),
        ("1.0", None),
        ("\N{ARABIC-INDIC DIGIT THREE}", None),
        ("\N{SUPERSCRIPT TWO}", None),
        ("\N{DEVANAGARI DIGIT FIVE}", None),
    ],
)
def test_only_ascii_digits_are_a_whole_number(text: str, number: int | None) -> None:
    assert parse_digits(text) == number

"""HOST:PORT as --join, --scheduler and PAAS_SCHEDULER take it: ports in ASCII digits."""

from __future__ import annotations

import pytest

from paas.common.addresses import AddressError, parse_address, parse_address_list


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:7070", ("127.0.0.1", 7070)),
        (" node-1:1 ", ("node-1", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("h:0", None),
        ("h:65536", None),
        ("h:", None),
        (":7070", None),
        ("h", None),
        ("h:70 70", None),
        ("h:+7070", None),
        ("h:\N{ARABIC-INDIC DIGIT SEVEN}\N{ARABIC-INDIC DIGIT ZERO}", None),
        ("h:7\N{SUPERSCRIPT TWO}", None),
        ("h:" + "9" * 5000, None),
    ],
)
def test_an_address_is_a_host_and_an_ascii_port(text: str, parsed: tuple[str, int] | None) -> None:
    if parsed is not None:
        assert parse_address(text) == parsed
    else:
        with pytest.raises(AddressError, match="expected HOST:PORT"):
            parse_address(text)


def test_a_list_is_checked_address_by_address() -> None:
    assert parse_address_list("a:1, b:2,") == ["a:1", "b:2"]
    with pytest.raises(AddressError, match="'b:\N{ARABIC-INDIC DIGIT TWO}'"):
        parse_address_list("a:1,b:\N{ARABIC-INDIC DIGIT TWO}")

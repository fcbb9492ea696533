"""Join tokens: their text, their hash, and when a stored one may be used."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from paas.common import jointoken as jt

DIGEST = hashlib.sha256(b"a CA certificate").hexdigest()


def test_a_new_token_reads_back_from_its_text() -> None:
    token = jt.new_token(DIGEST)
    text = str(token)
    assert text.startswith(f"paas1.{DIGEST}.")
    assert jt.parse_token(text) == token
    assert jt.parse_token(f"  {text}\n") == token
    assert len(text) == jt.MAX_TEXT


def test_a_secret_has_128_random_bits_and_each_token_its_own() -> None:
    tokens = {jt.new_token(DIGEST) for _ in range(50)}
    assert len({t.secret for t in tokens}) == 50
    assert len({t.id for t in tokens}) == 50
    assert all(len(bytes.fromhex(t.secret)) * 8 >= 128 for t in tokens)


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("", "want paas1"),
        ("paas2." + DIGEST + ".0123456789ab." + "0" * 32, "want paas1"),
        ("paas1." + DIGEST + ".0123456789ab", "want paas1"),
        ("paas1." + DIGEST.upper() + ".0123456789ab." + "0" * 32, "CA digest"),
        ("paas1." + DIGEST[:-1] + ".0123456789ab." + "0" * 32, "CA digest"),
        ("paas1." + DIGEST + ".0123456789a." + "0" * 32, "token id"),
        ("paas1." + DIGEST + ".0123456789ab." + "0" * 31, "secret"),
        ("paas1." + DIGEST + ".0123456789ab." + "g" * 32, "secret"),
        ("paas1." + DIGEST + ".0123456789ab." + "0" * 32 + ".x", "want paas1"),
    ],
)
def test_a_broken_token_names_what_is_wrong(text: str, part: str) -> None:
    with pytest.raises(jt.TokenError, match=part):
        jt.parse_token(text)


def test_only_the_hash_of_the_secret_is_kept_and_it_matches_only_its_secret() -> None:
    token = jt.new_token(DIGEST)
    record = jt.made(token, now=1000.0, ttl=60, uses=1)
    assert token.secret not in repr(record)
    assert record.secret_hash == hashlib.sha256(token.secret.encode()).hexdigest()
    assert jt.secret_matches(record.secret_hash, token.secret)
    assert not jt.secret_matches(record.secret_hash, jt.new_token(DIGEST).secret)


def _record(**changes: object) -> tuple[jt.JoinToken, jt.TokenRecord]:
    token = jt.new_token(DIGEST)
    record = jt.made(token, now=1000.0, ttl=3600, uses=2)
    return token, dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_a_fresh_token_may_be_used_until_its_uses_are_spent() -> None:
    token, record = _record()
    assert jt.refusal(record, token.secret, now=1001.0) is None
    record = jt.consumed(record)
    assert record.uses_left == 1
    assert jt.refusal(record, token.secret, now=1001.0) is None
    record = jt.consumed(record)
    assert jt.refusal(record, token.secret, now=1001.0) is jt.Refusal.USED_UP
    assert jt.spent(record, now=1001.0)
    with pytest.raises(ValueError, match="no use left"):
        jt.consumed(record)


def test_a_token_expires_at_its_time() -> None:
    token, record = _record()
    assert jt.refusal(record, token.secret, now=4599.9) is None
    assert jt.refusal(record, token.secret, now=4600.0) is jt.Refusal.EXPIRED
    assert not jt.spent(record, now=4599.9)
    assert jt.spent(record, now=4600.0)


def test_revoked_wins_over_expired_and_used_up() -> None:
    token, record = _record(uses_left=0)
    record = jt.revoked(record)
    assert jt.refusal(record, token.secret, now=9999.0) is jt.Refusal.REVOKED
    assert jt.spent(record, now=1001.0)


def test_a_wrong_secret_reads_as_an_unknown_token() -> None:
    _, record = _record()
    assert jt.refusal(record, jt.new_token(DIGEST).secret, now=1001.0) is jt.Refusal.UNKNOWN
    assert jt.refusal(None, "0" * 32, now=1001.0) is jt.Refusal.UNKNOWN


def test_each_refusal_is_one_line_that_says_which() -> None:
    words = {"unknown", "expired", "used up", "revoked"}
    for refusal in jt.Refusal:
        assert "\n" not in refusal.value
        assert sum(word in refusal.value for word in words) == 1


@pytest.mark.parametrize(
    ("ttl", "uses"), [(0, 1), (-1, 1), (jt.MAX_TTL + 1, 1), (60, 0), (60, jt.MAX_USES + 1)]
)
def test_lifetime_and_uses_are_bounded(ttl: float, uses: int) -> None:
    with pytest.raises(jt.TokenError):
        jt.made(jt.new_token(DIGEST), now=0.0, ttl=ttl, uses=uses)

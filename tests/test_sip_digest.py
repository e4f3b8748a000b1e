"""Digest authentication of agents' phones (issue 11, defect 1): RFC 3261 §22
with RFC 7616/8760's SHA-256, and no replay -- not to another destination,
not with a reused nonce-count, not after the nonce expired."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.digest import DigestAuthority, NonceCounts, parse_algorithms
from gateway.store.credentials import StoredKeys, ha1

REALM = "gateway"
URI = "sip:+15550001111@gw"


def h(algorithm: str, text: str) -> str:
    return (hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5)(text.encode()).hexdigest()


def keys(password: str = "pw") -> StoredKeys:
    return StoredKeys(ha1("alice", REALM, password), ha1("alice", REALM, password, "SHA-256"))


def nonce_of(authority: DigestAuthority, now: float = 1000) -> str:
    return authority.challenges(now=now)[0].split('nonce="')[1].split('"')[0]


def header(
    nonce: str, *, uri: str = URI, nc: str = "00000001", algorithm: str = "MD5", method: str = "INVITE"
) -> str:
    ha1_ = ha1("alice", REALM, "pw", algorithm)  # type: ignore[arg-type]
    response = h(algorithm, f"{ha1_}:{nonce}:{nc}:abc:auth:{h(algorithm, f'{method}:{uri}')}")
    return (
        f'Digest username="alice", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", qop=auth, nc={nc}, cnonce="abc", algorithm={algorithm}'
    )


def verify(authority: DigestAuthority, value: str, *, uri: str = URI, now: float = 1010) -> str:
    creds = authority.credentials(value)
    assert creds is not None
    return authority.verify(creds, "INVITE", uri, keys(), now=now)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_the_right_response_passes_once_and_only_for_its_request_uri(algorithm: str) -> None:
    authority = DigestAuthority(REALM, b"k" * 32)
    nonce = nonce_of(authority)
    value = header(nonce, algorithm=algorithm)
    assert verify(authority, value) == "ok"
    assert verify(authority, value) == "bad"  # the same nc again: a replay
    assert verify(authority, header(nonce, nc="00000002", algorithm=algorithm)) == "ok"
    assert verify(authority, header(nonce, nc="00000002", algorithm=algorithm)) == "bad"
    assert verify(authority, header(nonce, nc="00000001", algorithm=algorithm)) == "bad"  # lower


def test_a_header_signed_for_one_destination_cannot_call_another() -> None:
    """The toll-fraud replay of the issue: captured for +15551112222, replayed
    on an INVITE to +15559998888 with a new Call-ID."""
    authority = DigestAuthority(REALM, b"k" * 32)
    captured = header(nonce_of(authority), uri="sip:+15551112222@gw")
    assert verify(authority, captured, uri="sip:+15559998888@gw") == "bad"
    assert verify(authority, captured, uri="sip:+15551112222@gw") == "ok"


def test_expired_nonce_is_stale_and_forged_or_foreign_nonces_are_bad() -> None:
    authority = DigestAuthority(REALM, b"k" * 32)
    nonce = nonce_of(authority, now=1000)
    assert verify(authority, header(nonce), now=1000 + 301) == "stale"
    epoch, salt, _ = nonce.split(".")
    assert verify(authority, header(f"{epoch}.{salt}.{'0' * 24}")) == "bad"
    other = DigestAuthority(REALM, b"x" * 32)
    assert verify(other, header(nonce)) == "bad"
    assert authority.credentials("Basic YWxpY2U6cHc=") is None


def test_a_nonce_from_one_instance_verifies_on_another_with_the_same_secret() -> None:
    """sip.nonce_secret shared by every instance behind one address (DESIGN §6)."""
    one, two = DigestAuthority(REALM, b"shared" * 6), DigestAuthority(REALM, b"shared" * 6)
    assert verify(two, header(nonce_of(one))) == "ok"


def test_wrong_password_method_realm_or_algorithm_is_bad() -> None:
    authority = DigestAuthority(REALM, b"k" * 32)
    nonce = nonce_of(authority)
    creds = authority.credentials(header(nonce))
    assert creds is not None
    assert authority.verify(creds, "INVITE", URI, keys("other"), now=1010) == "bad"
    assert authority.verify(creds, "BYE", URI, keys(), now=1010) == "bad"
    assert verify(authority, header(nonce).replace(f'realm="{REALM}"', 'realm="evil"')) == "bad"
    assert verify(authority, header(nonce).replace("algorithm=MD5", "algorithm=MD5-sess")) == "bad"
    sha_only_missing = StoredKeys(ha1("alice", REALM, "pw"), None)  # set before SHA-256 existed
    creds = authority.credentials(header(nonce, algorithm="SHA-256"))
    assert creds is not None
    assert authority.verify(creds, "INVITE", URI, sha_only_missing, now=1010) == "bad"


def test_challenges_offer_each_configured_algorithm_with_one_nonce() -> None:
    authority = DigestAuthority(REALM, b"k" * 32, parse_algorithms("SHA-256, MD5"))
    first, second = authority.challenges(stale=True, now=1000)
    assert "algorithm=SHA-256" in first and "algorithm=MD5" in second
    assert first.split('nonce="')[1] == second.split('nonce="')[1].replace(
        "algorithm=MD5", "algorithm=SHA-256"
    )
    assert first.endswith("stale=true")
    assert nonce_of(authority) != nonce_of(authority)  # unique per challenge, even within a second
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        parse_algorithms("MD5,SHA-512")


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 20)), max_size=60))
def test_nonce_counts_accept_each_count_once_and_only_upwards(uses: list[tuple[int, int]]) -> None:
    counts = NonceCounts(capacity=1000)
    highest: dict[int, int] = {}
    for which, nc in uses:
        verdict = counts.claim(f"100.{which}.mac", 100, nc)
        expected = "ok" if nc > highest.get(which, 0) else "bad"
        assert verdict == expected
        if expected == "ok":
            highest[which] = nc


def test_nonce_counts_stay_bounded_and_evicted_nonces_ask_again() -> None:
    counts = NonceCounts(capacity=3)
    for i in range(10):
        assert counts.claim(f"{100 + i}.s.m", 100 + i, 1) == "ok"
    assert len(counts) == 3
    assert counts.claim("100.s.m", 100, 2) == "stale"  # forgotten: re-challenge, never a silent replay
    counts.forget_before(200)
    assert len(counts) == 0

"""SNI policy and certificate name matching: pure logic, no sockets."""

from __future__ import annotations

import pytest

from agent.commands.demo.pki import CA
from agent.tls.context import choose_sni, name_matches


@pytest.mark.parametrize(
    ("job", "profile", "global_on", "send", "verify", "source"),
    [
        (None, None, True, "api.example", "api.example", "global"),
        (None, None, False, None, "api.example", "global"),
        (None, True, False, "api.example", "api.example", "profile"),
        (None, False, True, None, "api.example", "profile"),
        (None, "front.example", True, "front.example", "front.example", "profile"),
        (True, False, False, "api.example", "api.example", "job"),
        (False, True, True, None, "api.example", "job"),
        ("other.example", False, False, "other.example", "other.example", "job"),
    ],
)
def test_most_specific_setting_wins(
    job: object, profile: object, global_on: bool, send: str | None, verify: str, source: str
) -> None:
    choice = choose_sni("api.example", job=job, profile=profile, global_enabled=global_on)  # type: ignore[arg-type]
    assert (choice.send, choice.verify_name, choice.source) == (send, verify, source)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]"])
def test_ip_literal_hosts_never_send_the_address_as_sni(host: str) -> None:
    for job in (None, True, False):
        choice = choose_sni(host, job=job, profile=True, global_enabled=True)
        assert choice.send is None and choice.verify_name == host
    # A name given to send instead is sent (and verified), also when the URL has an address.
    named = choose_sni(host, job="forced.example", profile=True, global_enabled=True)
    assert (named.send, named.verify_name) == ("forced.example", "forced.example")


def test_name_matching_follows_rfc6125() -> None:
    ca = CA()
    cert = ca.issue("svc", names=("api.example", "*.wild.example", "127.0.0.1")).cert
    assert name_matches(cert, "api.example") and name_matches(cert, "API.example.")
    assert name_matches(cert, "a.wild.example")
    assert not name_matches(cert, "wild.example")  # a wildcard needs a label
    assert not name_matches(cert, "a.b.wild.example")  # and covers one label only
    assert not name_matches(cert, "svc")  # no CN fallback
    assert name_matches(cert, "127.0.0.1") and not name_matches(cert, "127.0.0.2")

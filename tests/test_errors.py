"""One error tree: every kind is an ErrorKind, knows whether it is retried, and README.md's
kinds table says the same as the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.errors import (
    CALL_KINDS,
    AgentError,
    CallError,
    ConfigError,
    DestinationDenied,
    ErrorKind,
    JobError,
    KeystoreError,
    QueueError,
    TLSError,
    UnknownProfileError,
    VaultError,
)

ROOT = Path(__file__).resolve().parent.parent


def readme_kinds() -> dict[str, bool]:
    """README's Error kinds table: kind → retried."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Error kinds", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|.*\| (yes|no) \|$", section, flags=re.M)
    assert rows, "README.md has no Error kinds table"
    return {kind: retried == "yes" for kind, retried in rows}


def test_the_readme_table_lists_every_kind_with_its_retry_rule() -> None:
    assert readme_kinds() == {kind.value: kind.retryable for kind in ErrorKind}


def test_the_readme_has_one_table_of_kinds() -> None:
    text = (ROOT / "README.md").read_text()
    headers = re.findall(r"^\| kind \|", text, flags=re.M)
    assert len(headers) == 1


def test_only_failures_before_the_request_could_reach_the_partner_are_retried() -> None:
    retried = {kind for kind in ErrorKind if kind.retryable}
    assert retried == {ErrorKind.DNS, ErrorKind.CONNECT, ErrorKind.TLS_HANDSHAKE, ErrorKind.TIMEOUT}


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (JobError("body", "bad"), ErrorKind.INVALID_JOB),
        (UnknownProfileError("x", ["p"]), ErrorKind.UNKNOWN_PROFILE),
        (KeystoreError("profile p", "broken"), ErrorKind.KEYSTORE),
        (VaultError("down"), ErrorKind.VAULT),
        (DestinationDenied("no"), ErrorKind.DESTINATION_DENIED),
        (CallError(ErrorKind.TIMEOUT, "slow"), ErrorKind.TIMEOUT),
        (TLSError(ErrorKind.SNI_REQUIRED, "sni"), ErrorKind.SNI_REQUIRED),
    ],
)
def test_each_error_that_ends_a_job_carries_its_kind(error: AgentError, kind: ErrorKind) -> None:
    assert isinstance(error.kind, ErrorKind) and error.kind is kind
    assert error.retryable is kind.retryable


def test_errors_that_do_not_end_a_job_have_no_kind_and_the_base_is_not_raised() -> None:
    assert ConfigError("x").kind is None and QueueError("x").kind is None
    assert not QueueError("x").retryable
    with pytest.raises(TypeError):
        AgentError("what went wrong?")


def test_a_call_error_takes_only_call_kinds_and_a_tls_error_only_handshake_kinds() -> None:
    assert ErrorKind.INVALID_JOB not in CALL_KINDS
    with pytest.raises(ValueError):
        CallError(ErrorKind.INVALID_JOB, "not a call's")
    with pytest.raises(ValueError):
        TLSError(ErrorKind.TIMEOUT, "not a handshake's")

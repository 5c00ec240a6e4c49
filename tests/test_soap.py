"""SOAP request building, fault reading and the hardened parser, without a network."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest
from lxml import etree

from agent.config.config import load_config
from agent.errors import ConfigError, JobError
from agent.http.soap import (
    SOAP11,
    SOAP12,
    WSSE,
    UsernameToken,
    build_request,
    parse_response,
)
from agent.http.xmlsafe import XMLRejected, parse_xml
from agent.jobs.model import Job

FRAGMENT = '<m:Echo xmlns:m="urn:demo"><m:text>hi &amp; bye</m:text></m:Echo>'


def envelope(ns: str, inner: str, header: str = "") -> str:
    return f'<s:Envelope xmlns:s="{ns}">{header}<s:Body>{inner}</s:Body></s:Envelope>'


def test_soap11_headers_and_wrapped_fragment() -> None:
    body, headers = build_request(FRAGMENT, version="1.1", action="urn:demo#Echo")
    assert headers == {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:demo#Echo"'}
    root = etree.fromstring(body)
    assert root.tag == f"{{{SOAP11}}}Envelope"
    echo = root.find(f"{{{SOAP11}}}Body/{{urn:demo}}Echo")
    assert echo is not None and echo.findtext("{urn:demo}text") == "hi & bye"


def test_soap11_without_action_sends_an_empty_quoted_soapaction() -> None:
    _, headers = build_request(FRAGMENT, version="1.1", action=None)
    assert headers["SOAPAction"] == '""'


def test_soap12_action_rides_on_the_content_type() -> None:
    body, headers = build_request(FRAGMENT, version="1.2", action="urn:demo#Echo")
    assert headers == {
        "Content-Type": 'application/soap+xml; charset=utf-8; action="urn:demo#Echo"'
    }
    assert etree.fromstring(body).tag == f"{{{SOAP12}}}Envelope"


def test_a_whole_envelope_is_sent_as_written() -> None:
    text = envelope(SOAP12, FRAGMENT)
    body, _ = build_request(text, version="1.2", action=None)
    assert body == text.encode()


@pytest.mark.parametrize(
    ("body", "version", "needle"),
    [
        (envelope(SOAP12, FRAGMENT), "1.1", "SOAP 1.2 Envelope but soap_version is 1.1"),
        (envelope(SOAP11, FRAGMENT), "1.2", "SOAP 1.1 Envelope but soap_version is 1.2"),
        (envelope("urn:not-soap", FRAGMENT), "1.1", "namespace 'urn:not-soap'"),
        ("<m:Echo xmlns:m='urn:demo'>unclosed", "1.1", "well-formed"),
        ("just words", "1.1", "well-formed"),
        ("", "1.1", "needs a body"),
        (f'<s:Envelope xmlns:s="{SOAP11}"><s:Header/></s:Envelope>', "1.1", "has no Body"),
    ],
)
def test_unusable_bodies_are_invalid_jobs_naming_body(body: str, version: str, needle: str) -> None:
    with pytest.raises(JobError) as info:
        build_request(body, version=version, action=None)
    assert info.value.kind == "invalid_job"
    assert info.value.field == "body"
    assert needle in info.value.message


def test_a_body_with_a_dtd_is_refused() -> None:
    hostile = '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
    with pytest.raises(JobError, match="well-formed"):
        build_request(hostile, version="1.1", action=None)


def test_username_token_text_in_a_wrapped_fragment() -> None:
    token = UsernameToken("svc-user", "s3cr<et", "text")
    body, _ = build_request(FRAGMENT, version="1.1", action=None, security=token)
    root = etree.fromstring(body)
    ut = root.find(f"{{{SOAP11}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    assert ut is not None
    assert ut.findtext(f"{{{WSSE}}}Username") == "svc-user"
    password = ut.find(f"{{{WSSE}}}Password")
    assert password is not None and password.text == "s3cr<et"
    assert str(password.get("Type")).endswith("#PasswordText")
    assert "s3cr<et" not in repr(token)


def test_username_token_digest_follows_the_token_profile() -> None:
    token = UsernameToken("svc-user", "pw", "digest")
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    xml = token.element(now=now, nonce=b"0123456789abcdef")
    root = etree.fromstring(xml)
    ut = root.find(f"{{{WSSE}}}UsernameToken")
    assert ut is not None
    expected = hashlib.sha1(b"0123456789abcdef" + b"2026-01-02T03:04:05Z" + b"pw").digest()
    assert ut.findtext(f"{{{WSSE}}}Password") == base64.b64encode(expected).decode()
    assert ut.findtext(f"{{{WSSE}}}Nonce") == base64.b64encode(b"0123456789abcdef").decode()
    assert "pw<" not in xml


def test_username_token_is_added_to_an_envelope_header() -> None:
    text = envelope(SOAP12, FRAGMENT, header='<s:Header><x:Trace xmlns:x="urn:x"/></s:Header>')
    body, _ = build_request(text, version="1.2", action=None, security=UsernameToken("u", "p"))
    header = etree.fromstring(body).find(f"{{{SOAP12}}}Header")
    assert header is not None
    assert [etree.QName(c).localname for c in header] == ["Trace", "Security"]


def test_profile_and_inline_wss_settings(tmp_path: Path) -> None:
    p = "mid.httpclient.protocol.partner"
    (tmp_path / "config.xml").write_text(
        f"""<parameters>
        <parameter name="{p}.wss.username" value="svc"/>
        <parameter name="{p}.wss.password" value="pw"/>
        <parameter name="{p}.wss.password_type" value="Digest"/>
        </parameters>"""
    )
    profile = load_config(tmp_path / "config.xml").profiles["partner"]
    assert (profile.wss_username, profile.wss_password_type) == ("svc", "digest")
    (tmp_path / "config.xml").write_text(
        f'<parameters><parameter name="{p}.wss.password_type" value="md5"/></parameters>'
    )
    with pytest.raises(ConfigError, match="wss.password_type"):
        load_config(tmp_path / "config.xml")
    job = Job.from_dict(
        {
            "topic": "SOAPProbe",
            "endpoint": "https://a.test/",
            "body": FRAGMENT,
            "inline_profile": {
                "keystore": {"data_base64": "AAAA"},
                "wss": {"username": "u", "password": "p", "password_type": "digest"},
            },
        }
    )
    assert job.inline_profile is not None and job.inline_profile.wss_password_type == "digest"
    with pytest.raises(JobError) as info:
        Job.from_dict(
            {
                "topic": "SOAPProbe",
                "endpoint": "https://a.test/",
                "inline_profile": {"keystore": {"data_base64": "AAAA"}, "wss": {"username": "u"}},
            }
        )
    assert info.value.field == "inline_profile.wss"


def test_soap11_fault() -> None:
    answer = envelope(
        SOAP11,
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>bad input</faultstring>"
        '<detail><e:Why xmlns:e="urn:e">field x</e:Why></detail></s:Fault>',
    )
    result = parse_response(answer.encode(), version="1.1")
    assert result.problem is None
    assert result.fault is not None
    assert (result.fault.code, result.fault.message) == ("s:Client", "bad input")
    assert result.fault.detail is not None and "field x" in result.fault.detail


def test_soap12_fault_with_subcodes_and_languages() -> None:
    answer = envelope(
        SOAP12,
        "<s:Fault><s:Code><s:Value>s:Sender</s:Value>"
        '<s:Subcode><s:Value xmlns:t="urn:t">t:Invalid</s:Value></s:Subcode></s:Code>'
        '<s:Reason><s:Text xml:lang="de">Ungültig</s:Text><s:Text xml:lang="en-US">invalid'
        "</s:Text></s:Reason><s:Detail>plain detail</s:Detail></s:Fault>",
    )
    result = parse_response(answer.encode(), version="1.2")
    assert result.fault is not None
    assert result.fault.code == "s:Sender/t:Invalid"
    assert result.fault.message == "invalid"
    assert result.fault.detail == "plain detail"


def test_a_fault_in_the_other_version_is_still_read_and_noted() -> None:
    answer = envelope(SOAP11, "<s:Fault><faultcode>s:Server</faultcode></s:Fault>")
    result = parse_response(answer.encode(), version="1.2")
    assert result.fault is not None and result.fault.code == "s:Server"
    assert result.problem == "a SOAP 1.2 call was answered with SOAP 1.1"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"<html><body>502 Bad Gateway<br></body></html>", "not a SOAP message"),
        (b"", "empty"),
        (b'{"error": "json"}', "not a SOAP message"),
        (b"<result>ok</result>", "not a SOAP Envelope"),
    ],
)
def test_answers_that_are_not_soap_are_reported_plainly(data: bytes, needle: str) -> None:
    result = parse_response(data, version="1.1")
    assert result.fault is None
    assert result.problem is not None and needle in result.problem


def test_hostile_answers_expand_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY x SYSTEM "file://{secret}">]>'
        + envelope(
            SOAP11, "<s:Fault><faultcode>&x;</faultcode><faultstring>&x;</faultstring></s:Fault>"
        )
    ).encode()
    result = parse_response(xxe, version="1.1")
    assert result.fault is None
    assert "TOP-SECRET-MARKER" not in repr(result)
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9)
        )
        + b"]><l>&j;</l>"
    )
    result = parse_response(laughs, version="1.1")
    assert result.fault is None and result.problem is not None


def test_parser_limits() -> None:
    with pytest.raises(XMLRejected, match="over the limit"):
        parse_xml(b"<a>" + b"x" * 2000 + b"</a>", max_bytes=1000)
    with pytest.raises(XMLRejected, match="deeper than 10"):
        parse_xml(b"<a>" * 11 + b"</a>" * 11, max_depth=10)
    with pytest.raises(XMLRejected, match="line 3"):
        parse_xml(b"<a>\n<b>\n</c></a>")
    with pytest.raises(XMLRejected, match="network"):
        parse_xml(b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/a.dtd"><a/>')
    assert parse_xml(b"<a><b/></a>").tag == "a"

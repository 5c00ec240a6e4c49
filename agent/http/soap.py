"""SOAP 1.1 and 1.2: the request a well-behaved client sends, and the fault in the answer.

A job's ``body`` is either a whole Envelope (sent as written, once it is known to be XML of the
right SOAP version) or a Body fragment that is wrapped in an Envelope here. Answers are parsed
with the hardened parser of :mod:`agent.xmlsafe`: a partner's server is not trusted either.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field

from lxml import etree

from agent.errors import JobError
from agent.http.xmlsafe import XMLRejected, local_name, parse_xml, text_of
from agent.jobs.results import SoapFault

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
NAMESPACES = {"1.1": SOAP11, "1.2": SOAP12}
VERSION_OF = {v: k for k, v in NAMESPACES.items()}

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_TOKEN_PROFILE = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
)
_BASE64 = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)
PASSWORD_TYPES = ("text", "digest")
MAX_DETAIL = 4096
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


@dataclass(frozen=True)
class UsernameToken:
    """A WS-Security UsernameToken: the password sent as text, or as a SHA-1 digest."""

    username: str
    password: str = field(repr=False)
    password_type: str = "text"  # "text" | "digest"

    def element(self, *, now: dt.datetime | None = None, nonce: bytes | None = None) -> str:
        created = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        user = _escape(self.username)
        if self.password_type == "digest":
            nonce = nonce if nonce is not None else secrets.token_bytes(16)
            digest = hashlib.sha1(nonce + created.encode() + self.password.encode()).digest()
            password = (
                f'<wsse:Password Type="{_TOKEN_PROFILE}#PasswordDigest">'
                f"{base64.b64encode(digest).decode()}</wsse:Password>"
                f'<wsse:Nonce EncodingType="{_BASE64}">{base64.b64encode(nonce).decode()}'
                "</wsse:Nonce>"
            )
        else:
            password = (
                f'<wsse:Password Type="{_TOKEN_PROFILE}#PasswordText">'
                f"{_escape(self.password)}</wsse:Password>"
            )
        return (
            f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}">'
            f"<wsse:UsernameToken><wsse:Username>{user}</wsse:Username>{password}"
            f"<wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"
        )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def content_headers(version: str, action: str | None) -> dict[str, str]:
    """SOAP 1.1: text/xml and a quoted SOAPAction; 1.2: the action rides on the media type."""
    if version == "1.2":
        ctype = "application/soap+xml; charset=utf-8"
        if action:
            ctype += f'; action="{action}"'
        return {"Content-Type": ctype}
    return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action or ""}"'}


def build_request(
    body: str | bytes | None,
    *,
    version: str,
    action: str | None,
    security: UsernameToken | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The bytes to send and the SOAP headers for them; JobError("body", ...) if unusable."""
    if version not in NAMESPACES:
        raise JobError("soap_version", f"must be 1.1 or 1.2, got {version!r}")
    if body is None or not (body.strip() if isinstance(body, str) else body.strip()):
        raise JobError("body", "a SOAPProbe job needs a body: a SOAP Envelope or a Body fragment")
    raw = body.encode() if isinstance(body, str) else body
    ns = NAMESPACES[version]
    root = _as_document(raw)
    if root is None:  # several elements, or not XML: check it as a fragment
        payload = _wrapped(_fragment(raw), ns, security)
    elif local_name(root) == "Envelope":
        payload = _checked_envelope(root, raw, version, security)
    else:  # one element, already known to be well-formed
        payload = _wrapped(_without_declaration(raw), ns, security)
    return payload, content_headers(version, action)


def _as_document(raw: bytes) -> etree._Element | None:
    """The body parsed as a whole document, or None when it is a fragment (or not XML)."""
    try:
        return parse_xml(raw)
    except XMLRejected:
        return None


def _checked_envelope(
    root: etree._Element, raw: bytes, version: str, security: UsernameToken | None
) -> bytes:
    ns = etree.QName(root).namespace
    if ns != NAMESPACES[version]:
        found = VERSION_OF.get(ns or "")
        what = f"a SOAP {found} Envelope" if found else f"an Envelope in namespace {ns!r}"
        raise JobError(
            "body", f"is {what} but soap_version is {version} (expects {NAMESPACES[version]})"
        )
    if not any(local_name(child) == "Body" for child in root):
        raise JobError("body", "the SOAP Envelope has no Body")
    if security is None:
        return raw
    header = next((c for c in root if local_name(c) == "Header"), None)
    if header is None:
        header = etree.Element(etree.QName(ns, "Header"))
        root.insert(0, header)
    header.append(etree.fromstring(security.element()))
    out: bytes = etree.tostring(root, xml_declaration=True, encoding="utf-8")
    return out


def _without_declaration(raw: bytes) -> bytes:
    text = raw.strip()
    if text.startswith(b"<?xml"):
        end = text.find(b"?>")
        text = text[end + 2 :].strip() if end >= 0 else text
    return text


def _fragment(raw: bytes) -> bytes:
    text = _without_declaration(raw)
    try:
        wrapper = parse_xml(b"<fragment>" + text + b"</fragment>")
    except XMLRejected as exc:
        raise JobError(
            "body", f"is neither a SOAP Envelope nor a well-formed Body fragment: {exc}"
        ) from None
    loose = (wrapper.text or "").strip() or any((c.tail or "").strip() for c in wrapper)
    if loose or not any(isinstance(c.tag, str) for c in wrapper):
        raise JobError(
            "body",
            "is neither a SOAP Envelope nor a well-formed Body fragment: "
            "a Body fragment is one or more XML elements",
        )
    return text


def _wrapped(fragment: bytes, ns: str, security: UsernameToken | None) -> bytes:
    header = f"<soap:Header>{security.element()}</soap:Header>" if security else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{ns}">'
        f"{header}<soap:Body>".encode()
        + fragment
        + b"</soap:Body></soap:Envelope>"
    )


@dataclass(frozen=True)
class SoapAnswer:
    """What a SOAP answer holds for the result: its fault, or why it could not be read."""

    fault: SoapFault | None = None
    problem: str | None = None


def parse_response(data: bytes, *, version: str) -> SoapAnswer:
    """The fault of a SOAP answer, whatever its HTTP status; never raises.

    The envelope's own namespace decides how a fault is read, so a 1.2 server answering a 1.1
    request (or the reverse) still has its fault understood; ``problem`` notes the mismatch.
    """
    if not data.strip():
        return SoapAnswer(problem="the answer is empty, not a SOAP message")
    try:
        root = parse_xml(data)
    except XMLRejected as exc:
        return SoapAnswer(problem=f"the answer is not a SOAP message: {exc}")
    if local_name(root) != "Envelope":
        name = local_name(root)
        return SoapAnswer(problem=f"the answer is XML but not a SOAP Envelope (<{name}>)")
    ns = etree.QName(root).namespace or ""
    got = VERSION_OF.get(ns)
    if got is None:
        return SoapAnswer(problem=f"the answer's Envelope has an unknown namespace {ns!r}")
    problem = None if got == version else f"a SOAP {version} call was answered with SOAP {got}"
    body = next((c for c in root if local_name(c) == "Body"), None)
    fault = next((c for c in body if local_name(c) == "Fault"), None) if body is not None else None
    if fault is None:
        return SoapAnswer(problem=problem)
    parsed = _fault12(fault) if got == "1.2" else _fault11(fault)
    return SoapAnswer(fault=parsed, problem=problem)


def _child(element: etree._Element | None, name: str) -> etree._Element | None:
    if element is None:
        return None
    return next((c for c in element if local_name(c) == name), None)


def _fault11(fault: etree._Element) -> SoapFault:
    return SoapFault(
        code=text_of(_child(fault, "faultcode")),
        message=text_of(_child(fault, "faultstring")),
        detail=_detail(_child(fault, "detail")),
    )


def _fault12(fault: etree._Element) -> SoapFault:
    codes = []
    code = _child(fault, "Code")
    while code is not None:
        value = text_of(_child(code, "Value"))
        if value:
            codes.append(value)
        code = _child(code, "Subcode")
    reason = _child(fault, "Reason")
    texts = [c for c in reason if local_name(c) == "Text"] if reason is not None else []
    english = [t for t in texts if (t.get(XML_LANG) or "").lower().startswith("en")]
    message = text_of((english or texts)[0]) if texts else ""
    return SoapFault(code="/".join(codes), message=message, detail=_detail(_child(fault, "Detail")))


def _detail(detail: etree._Element | None) -> str | None:
    """The detail's content: its XML when it has elements, else its text; bounded."""
    if detail is None:
        return None
    if len(detail):
        parts = [
            etree.tostring(child, encoding="unicode", with_tail=False)
            for child in detail
            if isinstance(child.tag, str)
        ]
        out = "".join(parts)
    else:
        out = text_of(detail)
    if not out:
        return None
    return out if len(out) <= MAX_DETAIL else out[:MAX_DETAIL] + "…"

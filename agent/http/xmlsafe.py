"""Parsing XML that comes from outside: SOAP answers, job bodies, ECC payloads.

Everything the agent parses arrives from a partner's server or a job, so none of it is trusted:
no entity is expanded, no DTD is loaded, nothing is fetched from the network or the file system,
and size and nesting depth are bounded. A document type declaration is refused outright: a
SOAP message may not carry one (SOAP 1.1 §3, SOAP 1.2 part 1 §5), and refusing it is the
simplest way to be sure that an XXE or a billion-laughs document does nothing at all.
"""

from __future__ import annotations

from lxml import etree

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 256


class XMLRejected(ValueError):
    """The document is not well-formed, or is refused as hostile; the message says which."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=False,
        collect_ids=False,
    )


def parse_xml(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH
) -> etree._Element:
    """The root element of ``data``, parsed without entity expansion, DTDs or fetches.

    Raises XMLRejected for documents that are not XML, too large, too deep, or that carry a
    document type declaration (where entities, external or recursive, would be declared).
    """
    if len(data) > max_bytes:
        raise XMLRejected(f"XML document of {len(data)} bytes is over the limit ({max_bytes})")
    if not data.strip():
        raise XMLRejected("empty document, not XML")
    parser = _parser()
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise XMLRejected(f"not well-formed XML: {_syntax_error(exc)}") from None
    except ValueError as exc:  # e.g. a str with an encoding declaration
        raise XMLRejected(f"not XML: {exc}") from None
    # lxml lets namespace errors pass when a warning follows them (an undeclared prefix leaves
    # a tag such as "env:Envelope" that etree.QName refuses): refuse them here
    error = next((e for e in parser.error_log if e.level >= etree.ErrorLevels.ERROR), None)
    if error is not None:
        raise XMLRejected(f"not well-formed XML: {error.message} (line {error.line})")
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XMLRejected("document type declarations (DTD, entities) are refused")
    _check_depth(root, max_depth)
    return root


def _syntax_error(exc: etree.XMLSyntaxError) -> str:
    msg = str(exc.msg or exc).strip()
    line = exc.position[0] if exc.position else None
    return f"{msg} (line {line})" if line else msg


def _check_depth(root: etree._Element, limit: int) -> None:
    """Iterative, so a deep document cannot exhaust the Python stack."""
    stack: list[tuple[etree._Element, int]] = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > limit:
            raise XMLRejected(f"XML nested deeper than {limit} elements")
        stack.extend((child, depth + 1) for child in element)


def local_name(element: etree._Element) -> str:
    """The element's name without its namespace."""
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    name: str = etree.QName(tag).localname
    return name


def text_of(element: etree._Element | None) -> str:
    """All text inside ``element`` (entities are never expanded: unexpanded references vanish)."""
    if element is None:
        return ""
    return "".join(t for t in element.itertext() if isinstance(t, str)).strip()

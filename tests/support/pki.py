"""The throwaway PKI most tests share: one CA, two server names and three client certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from agent.commands.demo.pki import CA, Issued
from agent.credentials.formats import KeyMaterial
from agent.credentials.memory import load_client_material

P12_PASSWORD = "p12-Secret-Pass"


@dataclass(frozen=True)
class PKI:
    ca: CA
    alpha: Issued
    beta: Issued
    client_one: Issued
    client_two: Issued
    stranger: Issued  # a client certificate from a CA nobody trusts

    def write_ca(self, directory: Path) -> Path:
        path = directory / "ca.pem"
        path.write_bytes(self.ca.cert_pem())
        return path


def make_pki() -> PKI:
    ca = CA("Test Root CA")
    return PKI(
        ca=ca,
        alpha=ca.issue("alpha.test"),
        beta=ca.issue("beta.test"),
        client_one=ca.issue("client-one", client=True),
        client_two=ca.issue("client-two", client=True),
        stranger=CA("Stranger CA").issue("stranger", client=True),
    )


def server_context(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_client_material(
        ctx, KeyMaterial.of((pki.alpha.cert, *pki.alpha.chain), pki.alpha.key, "s")
    )
    return ctx

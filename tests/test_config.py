"""config.xml parsing: types, line numbers, unknown parameters, environment overrides, secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.config.config import AgentConfig
from agent.config.secure import key_path_for, load_secure_config
from agent.errors import ConfigError

FULL = b"""<?xml version="1.0" encoding="UTF-8"?>
<parameters>
  <!-- a comment the parser must skip -->
  <parameter name="name" value="edge-1"/>
  <parameter name="url" value="sqlite:///var/q.db"/>
  <parameter name="threads.max" value="8"/>
  <parameter name="mid.poll.time" value="2.5"/>
  <parameter name="mid.log.level" value="debug"/>
  <parameter name="glide.outbound.tls_sni.enabled" value="false"/>
  <parameter name="mid.proxy.use_proxy" value="true"/>
  <parameter name="mid.proxy.host" value="proxy.local"/>
  <parameter name="mid.proxy.port" value="3128"/>
  <parameter name="mid.httpclient.protocol.partner.path" value="keys/partner.p12"/>
  <parameter name="mid.httpclient.protocol.partner.password" value="pw"/>
  <parameter name="mid.httpclient.protocol.partner.port" value="8443"/>
  <parameter name="mid.httpclient.protocol.partner.type" value="PKCS12"/>
  <parameter name="mid.httpclient.protocol.partner.sni" value="api.partner.example"/>
  <parameter name="mid.httpclient.protocol.partner.truststore" value="/etc/ca.pem"/>
  <parameter name="mid.httpclient.protocol.partner.truststore.password" value="tpw"/>
  <parameter name="ext.cred.hashicorp.vault.address" value="https://127.0.0.1:8200"/>
  <parameter name="ext.cred.hashicorp.vault.role_id" value="r"/>
  <parameter name="ext.cred.hashicorp.vault.secret_id" value="s"/>
  <parameter name="agent.resolve" value="api.partner.example:127.0.0.1,b.example:[::1]"/>
  <parameter name="agent.outbound.allow" value="*.partner.example, 10.0.0.0/8"/>
  <parameter name="agent.lease.seconds" value="30"/>
  <parameter name="agent.health.listen" value="127.0.0.1:9100"/>
  <parameter name="mid.cert.expiry.warn_days" value="14"/>
  <parameter name="mid.some.mid.only.setting" value="x"/>
</parameters>
"""


def test_every_contract_parameter_is_typed(tmp_path: Path) -> None:
    cfg = AgentConfig.from_xml(FULL, base_dir=tmp_path, env={})
    assert (cfg.name, cfg.agent_name, cfg.url) == (
        "edge-1",
        "mid.server.edge-1",
        "sqlite:///var/q.db",
    )
    assert (cfg.threads_max, cfg.poll_time, cfg.log_level) == (8, 2.5, "debug")
    assert cfg.sni_enabled is False
    assert cfg.proxy is not None and (cfg.proxy.host, cfg.proxy.port) == ("proxy.local", 3128)
    p = cfg.profiles["partner"]
    assert p.path == tmp_path / "keys/partner.p12"
    assert (p.port, p.type, p.sni, p.password) == (8443, "pkcs12", "api.partner.example", "pw")
    assert p.truststore == Path("/etc/ca.pem") and p.truststore_password == "tpw"
    assert cfg.vault.role_id == "r" and cfg.vault.secret_id == "s"
    assert cfg.resolve == {"api.partner.example": "127.0.0.1", "b.example": "::1"}
    assert cfg.outbound_allow == ("*.partner.example", "10.0.0.0/8")
    assert (cfg.lease_seconds, cfg.health_listen, cfg.cert_warn_days) == (
        30,
        ("127.0.0.1", 9100),
        14,
    )
    assert cfg.warnings == ("unknown parameter 'mid.some.mid.only.setting' (line 28) ignored",)


def test_secrets_do_not_show_in_repr() -> None:
    cfg = AgentConfig.from_xml(FULL, env={})
    assert "pw" not in repr(cfg.profiles["partner"]).replace("password", "")
    assert "'s'" not in repr(cfg.vault)


def test_defaults_without_parameters() -> None:
    cfg = AgentConfig.from_xml(b"<parameters/>", env={})
    assert (cfg.url, cfg.threads_max, cfg.poll_time) == ("sqlite:///./agent-queue.db", 25, 5.0)
    assert cfg.sni_enabled is True and cfg.lease_seconds == 60 and cfg.cert_warn_days == 30


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("threads.max", "lots", "parameter threads.max, line 3: must be a whole number"),
        ("threads.max", "0", "between 1 and"),
        ("mid.poll.time", "soon", "parameter mid.poll.time"),
        ("glide.outbound.tls_sni.enabled", "maybe", "must be true or false"),
        ("mid.httpclient.protocol.p.port", "99999", "protocol.p.port, line 3"),
        ("mid.httpclient.protocol.p.type", "zip", "jks, jceks, pkcs12"),
        ("mid.httpclient.protocol.p.sni", "a b", "host name"),
        ("url", "ftp://x", "parameter url"),
        ("agent.health.listen", "9100", "host:port"),
        ("agent.resolve", "justahost", "host:address"),
    ],
)
def test_bad_values_name_parameter_and_line(name: str, value: str, needle: str) -> None:
    xml = f'<parameters>\n\n<parameter name="{name}" value="{value}"/>\n</parameters>'.encode()
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_xml(xml, env={})
    assert needle in str(info.value)


def test_malformed_xml_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_xml(
            b'<parameters>\n<parameter name="a" value="1"/>\n'
            b'<parameter name="b" value="1" value="2"/>\n</parameters>'
        )
    assert "line 3" in str(info.value) and "malformed XML" in str(info.value)


def test_doctype_is_refused() -> None:
    xml = b'<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><parameters/>'
    with pytest.raises(ConfigError, match="DOCTYPE"):
        AgentConfig.from_xml(xml)


def test_environment_overrides_by_name_as_written() -> None:
    xml = b'<parameters><parameter name="threads.max" value="8"/></parameters>'
    env = {"MID_CONFIG_threads.max": "3", "MID_CONFIG_mid.httpclient.protocol.q.sni": "false"}
    cfg = AgentConfig.from_xml(xml, env=env)
    assert cfg.threads_max == 3 and cfg.profiles["q"].sni is False


def test_environment_overrides_without_dots_for_systemd() -> None:
    env = {"MID_CONFIG_threads__max": "4", "MID_CONFIG_agent__health__listen": "127.0.0.1:9464"}
    cfg = AgentConfig.from_xml(b"<parameters/>", env=env)
    assert cfg.threads_max == 4 and cfg.health_listen == ("127.0.0.1", 9464)
    both = {"MID_CONFIG_threads.max": "6", "MID_CONFIG_threads__max": "4"}
    assert AgentConfig.from_xml(b"<parameters/>", env=both).threads_max == 6


def test_malformed_allow_list_network_names_the_parameter() -> None:
    xml = (
        b"<parameters>\n"
        b'<parameter name="agent.outbound.allow" value="*.a.test,10.0.0/99"/>\n'
        b"</parameters>"
    )
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_xml(xml)
    assert "agent.outbound.allow" in info.value.message and "line 2" in info.value.message
    assert "10.0.0/99" in info.value.message


def test_bad_environment_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"MID_CONFIG_threads\.max"):
        AgentConfig.from_xml(b"<parameters/>", env={"MID_CONFIG_threads.max": "many"})


def test_profile_with_two_sources_is_an_error() -> None:
    xml = b"""<parameters>
<parameter name="mid.httpclient.protocol.p.path" value="a.p12"/>
<parameter name="mid.httpclient.protocol.p.vault_path" value="kv/p"/>
</parameters>"""
    with pytest.raises(ConfigError, match="more than one keystore source"):
        AgentConfig.from_xml(xml)


def test_secure_values_are_encrypted_in_place_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "config.xml"
    path.write_text(
        "<parameters>\n  <!-- keep me -->\n"
        '  <parameter name="mid.httpclient.protocol.p.password" value="s3cr3t-pass"'
        ' secure="true"/>\n'
        '  <parameter name="threads.max" value="4"/>\n</parameters>\n'
    )
    cfg = load_secure_config(path, env={})
    assert cfg.profiles["p"].password == "s3cr3t-pass"
    text = path.read_text()
    assert "s3cr3t-pass" not in text and 'value="encrypted:' in text and "keep me" in text
    key = key_path_for(path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = load_secure_config(path, env={})  # the encrypted value decrypts in memory
    assert again.profiles["p"].password == "s3cr3t-pass" and path.read_text() == text


def test_encrypted_value_without_its_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.xml"
    path.write_text(
        '<parameters><parameter name="mid.instance.password" value="x" secure="true"/></parameters>'
    )
    load_secure_config(path, env={})
    key_path_for(path).unlink()
    with pytest.raises(ConfigError, match="mid.instance.password.*is encrypted but .* is missing"):
        load_secure_config(path, env={})


def test_config_example_parses_with_every_commented_parameter_enabled() -> None:
    """config.xml.example documents every parameter: as shipped and fully uncommented, it loads
    without a warning about an unknown name."""
    import re

    text = (Path(__file__).resolve().parent.parent / "config.xml.example").read_text()
    full = re.sub(r"<!-- (<parameter [^>]*/>) -->", r"\1", text)
    assert full != text
    for variant in (text, full):
        config = AgentConfig.from_xml(variant.encode(), base_dir=Path("/etc/agent"), env={})
        assert config.warnings == ()
    everything = AgentConfig.from_xml(full.encode(), base_dir=Path("/etc/agent"), env={})
    assert everything.profiles["partner"].wss_password_type == "digest"
    assert everything.vault.address and everything.proxy is not None
    assert config.health_listen == ("127.0.0.1", 9464)  # the port the unit, image and README use
    assert config.log_format == "json"


def test_profile_names_are_matched_without_regard_to_case() -> None:
    config = AgentConfig.from_xml(
        b'<parameters><parameter name="mid.httpclient.protocol.PartnerB.port" value="8443"/>'
        b"</parameters>",
        env={},
    )
    for spelling in ("PartnerB", "partnerb", "PARTNERB"):
        found = config.profile(spelling)
        assert found is not None and (found.name, found.port) == ("PartnerB", 8443)
    assert config.profile("partner") is None


def test_profiles_differing_only_in_case_are_an_error_naming_both() -> None:
    p = "mid.httpclient.protocol"
    text = (
        f'<parameters>\n<parameter name="{p}.PartnerB.path" value="a.p12"/>\n'
        f'<parameter name="{p}.partnerb.password" value="x"/>\n</parameters>'
    ).encode()
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_xml(text, env={})
    message = str(err.value)
    assert f"{p}.PartnerB.path" in message and f"{p}.partnerb.password" in message
    assert "differ only in case" in message and "line 3" in message


def test_log_format_is_text_json_or_auto() -> None:
    def fmt(value: str) -> str:
        xml = f'<parameters><parameter name="agent.log.format" value="{value}"/></parameters>'
        return AgentConfig.from_xml(xml.encode(), env={}).log_format

    assert AgentConfig().log_format == "auto"
    assert (fmt("text"), fmt("JSON"), fmt("auto")) == ("text", "json", "auto")
    with pytest.raises(ConfigError, match="parameter agent.log.format.*must be text or json"):
        fmt("xml")


def test_a_config_error_from_a_file_keeps_its_parameter_and_line(tmp_path: Path) -> None:
    from agent.config.config import load_config
    from agent.config.secure import load_secure_config

    path = tmp_path / "config.xml"
    path.write_text(
        '<parameters>\n\n  <parameter name="threads.max" value="many"/>\n</parameters>\n'
    )
    for load in (load_config, load_secure_config):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert (info.value.parameter, info.value.line) == ("threads.max", 3)
        assert str(path) in str(info.value) and "threads.max" in str(info.value)

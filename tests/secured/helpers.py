"""The secured broker as the tests see it: its logins, its admin, and program runs scanned for secrets.

scripts/secure_broker.sh generated every certificate and secret under .cache/secure/;
the tests read them from there. Every program run goes through `SecureCluster.run`,
which fails the test if any secret used here appears in the program's output.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from dotenv import dotenv_values

from config import Settings, load_settings
from orderpipe.core.acls import Grant
from orderpipe.core.replay import ledger_topic
from orderpipe.core.topics import ledger_spec, missing_topics
from orderpipe.errors import OrderPipeError
from orderpipe.kafka.admin import create_topics, permissions
from orderpipe.kafka.clients import connect_admin
from orderpipe.programs.acl_command import _acl
from tests.audit import Audit, audit_topics, pipeline_env
from tests.integration.helpers import read_topic

ROOT = Path(__file__).resolve().parents[2]
SECURE = ROOT / ".cache" / "secure"
TLS = SECURE / "tls"
SASL_SSL = "127.0.0.1:9193"
MUTUAL_TLS = "127.0.0.1:9194"
PLAINTEXT = "127.0.0.1:9092"  # the plain broker of scripts/broker.sh up
TOKEN_URL = "http://127.0.0.1:9196/oauth/token"
REGISTRY_URL = "https://127.0.0.1:8443/apis/ccompat/v7"
START_HINT = "start it with 'scripts/broker.sh secure up' (scripts/test.sh does it for you)"
WAIT_S = 30.0


@dataclass(frozen=True)
class Run:
    """A finished program run."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def last_error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


@dataclass
class SecureCluster:
    """The secured broker's logins and secrets, and an admin connection to it."""

    secrets: dict[str, str]
    admin: AdminClient
    passwords: set[str] = field(default_factory=set)  # of SCRAM users made by tests

    # Logins, as the environment variables a user would set.
    def login(self, kind: str, user: str = "pipeline", password: str | None = None) -> dict[str, str]:
        ca = {"KAFKA_SSL_CA_LOCATION": str(TLS / "ca.pem")}
        sasl = {**ca, "KAFKA_BOOTSTRAP_SERVERS": SASL_SSL, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
        if kind in ("scram", "plain"):
            mechanism, default = {
                "scram": ("SCRAM-SHA-512", "PIPELINE_PASSWORD"),
                "plain": ("PLAIN", "PLAIN_PASSWORD"),
            }[kind]
            return {
                **sasl,
                "KAFKA_SASL_MECHANISM": mechanism,
                "KAFKA_SASL_USERNAME": user,
                "KAFKA_SASL_PASSWORD": password if password is not None else self.secrets[default],
            }
        if kind == "oauth":
            secret = password if password is not None else self.secrets["OAUTH_CLIENT_SECRET"]
            return {
                **sasl,
                "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": TOKEN_URL,
                "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": user,
                "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": secret,
                "KAFKA_SASL_OAUTHBEARER_SCOPE": "kafka",
            }
        if kind == "mtls":
            return {
                **ca,
                "KAFKA_BOOTSTRAP_SERVERS": MUTUAL_TLS,
                "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CERTIFICATE_LOCATION": str(TLS / "client.pem"),
                "KAFKA_SSL_KEY_LOCATION": str(TLS / "client.key"),
                "KAFKA_SSL_KEY_PASSWORD": self.secrets["CLIENT_KEY_PASSWORD"],
            }
        if kind == "admin":
            return _admin_login(self.secrets)
        raise ValueError(kind)

    def registry(self) -> dict[str, str]:
        return {
            "SCHEMA_REGISTRY_URL": REGISTRY_URL,
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"registry:{self.secrets['REGISTRY_PASSWORD']}",
            "SCHEMA_REGISTRY_SSL_CA_LOCATION": str(TLS / "ca.pem"),
        }

    def env(self, prefix: str, login: Mapping[str, str]) -> dict[str, str]:
        """A pipeline of its own (topics and group named after `prefix`) with a login."""
        return {**pipeline_env(SASL_SSL, prefix), **login}

    # Administration, as the super user.
    def create_topics(self, settings: Settings) -> None:
        """The pipeline's topics and the replay ledger, as an administrator would create them."""
        ledger = ledger_spec(settings, ledger_topic(settings.dlq_topic))
        create_topics(self.admin, [*missing_topics(settings, {}), ledger])

    def dead_letter(self, settings: Settings) -> None:
        """One record on the DLQ topic, written as the super user."""
        producer = Producer(_librdkafka(self.login("admin")))
        producer.produce(settings.dlq_topic, b"\x00poison", b"K-1", headers=[("dlq.reason", b"deserialization")])
        assert producer.flush(WAIT_S) == 0

    def new_scram_user(self) -> tuple[str, str]:
        name, password = f"user-{secrets.token_hex(5)}", secrets.token_hex(16)
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        _wait_all(
            self.admin.alter_user_scram_credentials([UserScramCredentialUpsertion(name, info, password.encode())])
        )
        self.passwords.add(password)
        return name, password

    def delete_scram_user(self, name: str) -> None:
        deletion = UserScramCredentialDeletion(name, ScramMechanism.SCRAM_SHA_512)
        _wait_all(self.admin.alter_user_scram_credentials([deletion]))

    def grant_with_script(self, principal: str, env: Mapping[str, str], *programs: str) -> None:
        """Grants with scripts/acls.sh, run as the admin with the pipeline's topic names."""
        flags = [arg for program in programs for arg in ("--program", program)]
        result = subprocess.run(
            [str(ROOT / "scripts" / "acls.sh"), "apply", principal, *flags],
            env={**os.environ, **env, **self.login("admin")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "granted" in result.stdout

    def revoke(self, principal: str, grant: Grant) -> None:
        _wait_all(self.admin.delete_acls([AclBindingFilter(*_acl(principal, grant))]))

    def restore(self, principal: str, grant: Grant) -> None:
        _wait_all(self.admin.create_acls([AclBinding(*_acl(principal, grant))]))

    def wait_until_allowed(self, env: Mapping[str, str], grants: Iterable[Grant], allowed: bool = True) -> None:
        """Waits until the principal of `env` may (or may not) do each of `grants`, as Kafka answers it."""
        settings = load_settings(environ=env, env_file=None)
        client = connect_admin(settings)
        wanted = [g for g in grants if g.resource in ("TOPIC", "GROUP")]
        deadline = time.monotonic() + WAIT_S
        while True:
            topics = sorted({g.name for g in wanted if g.resource == "TOPIC"})
            group = next((g.name for g in wanted if g.resource == "GROUP"), "")
            seen = permissions(client, topics, group)
            if all((g.operation in (seen.get((g.resource, g.name)) or ())) == allowed for g in wanted):
                return
            assert time.monotonic() < deadline, f"the ACLs did not take effect within {WAIT_S}s: {seen}"
            time.sleep(0.1)

    # Reading and judging, as the super user.
    def read(self, settings: Settings, topic: str) -> list[Any]:
        return read_topic(SASL_SSL, topic, _librdkafka(self.login("admin")))

    def audit(self, settings: Settings) -> Audit:
        return audit_topics(lambda topic: self.read(settings, topic), settings)

    # Programs.
    def run(self, env: Mapping[str, str], script: str, *args: str, timeout: float = 90) -> Run:
        """Runs producer.py or consumer.py with `env`; fails the test if a secret shows in its output."""
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, script, *args],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        run = Run(result.returncode, result.stdout, result.stderr, time.monotonic() - start)
        self.assert_no_secret(run.stdout + run.stderr, env)
        return run

    def assert_no_secret(self, output: str, env: Mapping[str, str] = {}) -> None:
        named = {value: name for name, value in self.secrets.items()}
        named |= dict.fromkeys(self.passwords, "a test user's password")
        named |= {value: name for name, value in env.items() if _secret_name(name)}
        leaked = sorted(name for value, name in named.items() if len(value) >= 4 and value in output)
        assert not leaked, f"secrets in the output: {leaked}"


def _admin_login(values: Mapping[str, str]) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": SASL_SSL,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_LOCATION": str(TLS / "ca.pem"),
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "admin",
        "KAFKA_SASL_PASSWORD": values["ADMIN_PASSWORD"],
    }


def _secret_name(name: str) -> bool:
    return any(word in name for word in ("PASSWORD", "SECRET", "USER_INFO"))


def _librdkafka(env: Mapping[str, str]) -> dict[str, Any]:
    settings = load_settings(environ=env, env_file=None)
    return settings.kafka_client_config()


def _wait_all(futures: Mapping[Any, Any]) -> None:
    for future in futures.values():
        future.result(timeout=WAIT_S)


def connect_secure() -> SecureCluster:
    """The secured broker, or a failed test that says how to start it."""
    secrets_file = SECURE / "secrets.env"
    if not secrets_file.is_file():
        pytest.fail(f"the secured broker has not been set up ({secrets_file} is missing): {START_HINT}")
    values = {k: v for k, v in dotenv_values(secrets_file).items() if v}
    try:
        admin = connect_admin(load_settings(environ=_admin_login(values), env_file=None))
    except OrderPipeError as exc:
        pytest.fail(f"{exc} The secured tests need the secured broker: {START_HINT}.")
    return SecureCluster(values, admin)

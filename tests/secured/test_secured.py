"""The pipeline on a secured broker: each login, least privilege, and every login error as one sentence.

Each test has topics and a group of its own, created by the admin (the principals
here may not create topics). Every program run is scanned for the secrets in use
(SecureCluster.run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_settings
from orderpipe.core.acls import grants
from tests.secured.helpers import PLAINTEXT, REGISTRY_URL, SASL_SSL, TLS, SecureCluster

LOGINS = ("scram", "plain", "oauth", "mtls")
ERROR_DEADLINE_S = 30


@pytest.mark.parametrize("login", LOGINS)
def test_each_login_publishes_orders(secure: SecureCluster, prefix: str, login: str) -> None:
    """SCRAM-SHA-512 and PLAIN over SASL_SSL, OAUTHBEARER (OIDC client credentials), mutual TLS (CN=pipeline)."""
    env = secure.env(prefix, secure.login(login))
    settings = load_settings(environ=env, env_file=None)
    secure.create_topics(settings)
    secure.grant_with_script("User:pipeline", env, "producer")
    secure.wait_until_allowed(env, grants(settings, ["producer"]))

    run = secure.run(env, "producer.py", "--count", "20", "--rate", "0", "--verbose")

    assert run.returncode == 0, run.stderr
    assert "delivered 20, failed 0" in run.stdout
    assert len(secure.read(settings, settings.orders_topic)) == 20


def test_a_providers_properties_file_is_all_the_login_needs(secure: SecureCluster, prefix: str, tmp_path: Path) -> None:
    """The Confluent Cloud shape: bootstrap servers and a SASL/PLAIN login in client.properties, nothing else."""
    properties = tmp_path / "client.properties"
    properties.write_text(
        "# as a provider hands it out\n"
        f"bootstrap.servers={SASL_SSL}\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanisms=PLAIN\n"
        "sasl.username=pipeline\n"
        f"sasl.password={secure.secrets['PLAIN_PASSWORD']}\n"
        f"ssl.ca.location={TLS / 'ca.pem'}\n"
    )
    env = {k: v for k, v in secure.env(prefix, {}).items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["KAFKA_CLIENT_CONFIG"] = str(properties)
    settings = load_settings(environ=env, env_file=None)
    secure.create_topics(settings)
    secure.grant_with_script("User:pipeline", {**env, "KAFKA_BOOTSTRAP_SERVERS": SASL_SSL}, "producer")
    secure.wait_until_allowed({**env, **secure.login("plain")}, grants(settings, ["producer"]))

    run = secure.run(env, "producer.py", "--count", "10", "--rate", "0", "--verbose")

    assert run.returncode == 0, run.stderr
    assert "delivered 10, failed 0" in run.stdout


def test_a_least_privilege_principal_runs_the_pipeline_exactly_once(
    secure: SecureCluster, prefix: str, principal: tuple[str, str]
) -> None:
    """Only the ACLs scripts/acls.sh grants (no Create, no Alter, nothing cluster-wide): retries, DLQ and replay."""
    user, password = principal
    env = {**secure.env(prefix, secure.login("scram", user, password)), "RETRY_BACKOFF_MS": "50"}
    settings = load_settings(environ=env, env_file=None)
    secure.create_topics(settings)
    secure.grant_with_script(f"User:{user}", env, "producer", "consumer", "stats", "dlq")
    secure.wait_until_allowed(env, grants(settings))

    produced = secure.run(
        env, "producer.py", "--count", "300", "--rate", "0", "--invalid-rate", "0.05", "--poison-rate", "0.05"
    )
    consumed = secure.run(env, "consumer.py", "--idle-exit", "3", "--failure-rate", "0.4", "--seed", "7")

    assert produced.returncode == 0, produced.stderr
    assert consumed.returncode == 0, consumed.stderr
    audit = secure.audit(settings)
    assert audit.exact, audit.describe()
    exhausted = audit.dlq_by_reason.get("retries-exhausted", 0)
    assert exhausted > 0, "some orders ran out of retries"
    assert {"deserialization", "validation"} <= set(audit.dlq_by_reason)

    replayed = secure.run(env, "dlq.py", "replay", "--reason", "retries-exhausted", "--quiet")
    recounted = secure.run(env, "consumer.py", "--idle-exit", "3")
    stats = secure.run(env, "consumer.py", "--stats")

    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == f"replayed {exhausted} records"
    assert recounted.returncode == 0, recounted.stderr
    audit = secure.audit(settings)
    assert audit.exact, audit.describe()
    assert audit.stats.count == audit.valid, "every valid order counted once: " + audit.describe()
    assert stats.returncode == 0, stats.stderr
    assert f"count {audit.expected.count}, sum_cents {audit.expected.sum_cents}" in stats.stdout


def test_oauth_with_the_registry_over_https_and_basic_auth(secure: SecureCluster, prefix: str) -> None:
    env = {**secure.env(prefix, secure.login("oauth")), **secure.registry()}
    settings = load_settings(environ=env, env_file=None)
    secure.create_topics(settings)
    secure.grant_with_script("User:pipeline", env, "producer", "consumer")
    secure.wait_until_allowed(env, grants(settings, ["producer", "consumer"]))

    produced = secure.run(env, "producer.py", "--count", "100", "--rate", "0", "--poison-rate", "0.05")
    consumed = secure.run(env, "consumer.py", "--idle-exit", "3")

    assert produced.returncode == 0, produced.stderr
    assert consumed.returncode == 0, consumed.stderr
    assert f"schema registry at {REGISTRY_URL}" in consumed.stdout
    values = [r.value for r in secure.read(settings, settings.orders_topic)]
    assert sum(v[:1] == b"\x00" for v in values) >= 90, "orders are in the registry's wire format"
    audit = secure.audit(settings)
    assert audit.exact, audit.describe()
    assert audit.valid >= 90


# Removing any one ACL a program needs. The cases are named by the default topic and
# group names; each test finds the same grant (by its place) among its own names.
def _required(program: str) -> list[tuple[str, int]]:
    every = grants(load_settings(environ={}, env_file=None), [program])
    return [(program, i) for i, g in enumerate(every) if g.required]


REQUIRED = [*_required("producer"), *_required("consumer"), *_required("stats"), *_required("dlq")]
_DEFAULTS = load_settings(environ={}, env_file=None)


@pytest.mark.parametrize(
    ("program", "index"),
    REQUIRED,
    ids=[f"{p}-{grants(_DEFAULTS, [p])[i].describe().replace(' ', '-')}" for p, i in REQUIRED],
)
def test_without_any_one_acl_the_program_stops_naming_the_permission(
    secure: SecureCluster, prefix: str, principal: tuple[str, str], program: str, index: int
) -> None:
    user, password = principal
    env = secure.env(prefix, secure.login("scram", user, password))
    settings = load_settings(environ=env, env_file=None)
    secure.create_topics(settings)
    secure.grant_with_script(f"User:{user}", env, program)
    program_grants = grants(settings, [program])
    removed = program_grants[index]
    secure.revoke(f"User:{user}", removed)
    secure.wait_until_allowed(env, [g for g in program_grants if g != removed and g.required])
    secure.wait_until_allowed(env, [removed], allowed=False)

    script = {
        "producer": ("producer.py", "--count", "5", "--rate", "0"),
        "stats": ("consumer.py", "--stats"),
        "dlq": ("dlq.py", "replay"),
    }
    if program == "dlq":
        secure.dead_letter(settings)  # something to replay, so that every write is tried
    run = secure.run(env, *script.get(program, ("consumer.py", "--idle-exit", "5")))

    assert run.returncode == 2, run.stdout + run.stderr
    assert run.seconds < ERROR_DEADLINE_S
    assert "Traceback" not in run.stderr
    sentence = run.last_error_line
    assert sentence.startswith("error: "), run.stderr
    assert removed.name in sentence, sentence
    # A topic the principal may not even see is named as missing: Kafka hides it.
    assert removed.operation in sentence or "may not see it" in sentence, sentence


def test_without_describe_configs_the_consumer_warns_and_goes_on(
    secure: SecureCluster, prefix: str, principal: tuple[str, str]
) -> None:
    user, password = principal
    env = secure.env(prefix, secure.login("scram", user, password))
    settings = load_settings(environ=env, env_file=None)
    secure.create_topics(settings)
    secure.grant_with_script(f"User:{user}", env, "consumer")
    optional = [g for g in grants(settings, ["consumer"]) if not g.required]
    for grant in optional:
        secure.revoke(f"User:{user}", grant)
    secure.wait_until_allowed(env, optional, allowed=False)

    run = secure.run(env, "consumer.py", "--idle-exit", "1")

    assert run.returncode == 0, run.stderr
    assert run.stderr.count("DescribeConfigs is not allowed") == len(optional)


# Login errors: one sentence naming the problem and the setting, exit 2, within 30 s.
def _bad_login(secure: SecureCluster, case: str) -> tuple[dict[str, str], str, str]:
    """(settings, words the sentence must hold, the setting it must name) for each error case."""
    scram, mtls, oauth = secure.login("scram"), secure.login("mtls"), secure.login("oauth")
    admin = secure.login("admin")  # the registry cases get past Kafka (and may create topics)
    cases = {
        "wrong SCRAM password": (
            {**scram, "KAFKA_SASL_PASSWORD": "not-the-password"},
            "refused the SASL SCRAM-SHA-512",
            "KAFKA_SASL_PASSWORD",
        ),
        "wrong PLAIN password": (
            secure.login("plain", password="not-the-password"),
            "refused the SASL PLAIN",
            "KAFKA_SASL_PASSWORD",
        ),
        "token the broker rejects": (
            secure.login("oauth", user="rogue", password=secure.secrets["OAUTH_ROGUE_SECRET"]),
            "rejected the OAuth token",
            "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        ),
        "expired token": (
            secure.login("oauth", user="expired", password=secure.secrets["OAUTH_ROGUE_SECRET"]),
            "handed out a token that has already expired",
            "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        ),
        "client secret the token endpoint refuses": (
            {**oauth, "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "not-the-secret"},
            "refused this client",
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
        ),
        "untrusted client certificate": (
            {
                **mtls,
                "KAFKA_SSL_CERTIFICATE_LOCATION": str(TLS / "rogue-client.pem"),
                "KAFKA_SSL_KEY_LOCATION": str(TLS / "rogue-client.key"),
                "KAFKA_SSL_KEY_PASSWORD": "",
            },
            "refused this client's TLS certificate",
            "KAFKA_SSL_CERTIFICATE_LOCATION",
        ),
        "no client certificate": (
            {**mtls, "KAFKA_SSL_CERTIFICATE_LOCATION": "", "KAFKA_SSL_KEY_LOCATION": "", "KAFKA_SSL_KEY_PASSWORD": ""},
            "refused this client's TLS certificate",
            "KAFKA_SSL_CERTIFICATE_LOCATION",
        ),
        "wrong CA": (
            {**scram, "KAFKA_SSL_CA_LOCATION": str(TLS / "rogue-ca.pem")},
            "did not pass this client's checks (certificate verify failed",
            "KAFKA_SSL_CA_LOCATION",
        ),
        "TLS to a plaintext port": (
            {"KAFKA_BOOTSTRAP_SERVERS": PLAINTEXT, "KAFKA_SECURITY_PROTOCOL": "SSL"},
            "is a plaintext listener",
            "KAFKA_SECURITY_PROTOCOL",
        ),
        "plaintext to a TLS port": (
            {"KAFKA_BOOTSTRAP_SERVERS": SASL_SSL, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
            "as a TLS listener does when spoken to in plaintext",
            "KAFKA_SECURITY_PROTOCOL",
        ),
        "registry password wrong": (
            {**admin, **secure.registry(), "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "registry:not-the-password"},
            "refused the credentials (HTTP 401)",
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        ),
        "registry CA wrong": (
            {**admin, **secure.registry(), "SCHEMA_REGISTRY_SSL_CA_LOCATION": str(TLS / "rogue-ca.pem")},
            "did not pass this client's checks (CERTIFICATE_VERIFY_FAILED",
            "SCHEMA_REGISTRY_SSL_CA_LOCATION",
        ),
        "plain HTTP to the registry's HTTPS port": (
            {**admin, **secure.registry(), "SCHEMA_REGISTRY_URL": REGISTRY_URL.replace("https://", "http://")},
            "if it serves HTTPS, SCHEMA_REGISTRY_URL must start with https://",
            "SCHEMA_REGISTRY_URL",
        ),
    }
    return cases[case]


LOGIN_ERRORS = (
    "wrong SCRAM password",
    "wrong PLAIN password",
    "token the broker rejects",
    "expired token",
    "client secret the token endpoint refuses",
    "untrusted client certificate",
    "no client certificate",
    "wrong CA",
    "TLS to a plaintext port",
    "plaintext to a TLS port",
    "registry password wrong",
    "registry CA wrong",
    "plain HTTP to the registry's HTTPS port",
)


@pytest.mark.parametrize("case", LOGIN_ERRORS)
@pytest.mark.parametrize("script", ["producer.py", "consumer.py"])
def test_a_login_error_is_one_sentence_naming_the_setting(
    secure: SecureCluster, prefix: str, case: str, script: str
) -> None:
    login, words, setting = _bad_login(secure, case)
    env = {**secure.env(prefix, {}), **login}

    flags = ("--count", "1") if script == "producer.py" else ("--idle-exit", "5")
    run = secure.run(env, script, *flags)

    # A TLS endpoint that drops a plain request looks like one restarting: unavailable, with the hint.
    assert run.returncode == (1 if case == "plain HTTP to the registry's HTTPS port" else 2), run.stdout + run.stderr
    assert run.seconds < ERROR_DEADLINE_S
    assert run.stderr.count("\n") == 1, f"one line, without --verbose: {run.stderr!r}"
    assert words in run.stderr, run.stderr
    assert setting in run.stderr, run.stderr

"""Unit tests of the security core: login diagnosis, ACLs, registry login problems, secret scrubbing.

The texts fed to `diagnose` are the ones librdkafka 2.16 reported against the
secured broker (tests/secured runs the same cases end to end).
"""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from config import load_settings
from orderpipe.config.settings import build_settings
from orderpipe.core.acls import Grant, denied_sentence, grants, lacking_sentence, missing_grants, require
from orderpipe.errors import ConfigError
from orderpipe.kafka.login import CLOSED_AT_FIRST_REQUEST_LIMIT, Credentials, LoginWatch, diagnose
from orderpipe.kafka.registry import registry_login_problem
from orderpipe.programs import cli
from orderpipe.programs.acl_command import table
from orderpipe.text import ScrubbedStream, Scrubber

SCRAM = Credentials("SASL_SSL", "SCRAM-SHA-512", "/certs/ca.pem", "", "")
OAUTH = Credentials("SASL_SSL", "OAUTHBEARER", "/certs/ca.pem", "", "https://idp.example/token")
MTLS = Credentials("SSL", "", "/certs/ca.pem", "/certs/client.pem", "")
PLAIN_TEXT = Credentials("PLAINTEXT", "", "", "", "")
BROKER = "sasl_ssl://127.0.0.1:9193/bootstrap: "


@pytest.mark.parametrize(
    ("text", "login", "words"),
    [
        (
            BROKER + "SASL authentication error: Authentication failed during authentication due to invalid "
            "credentials with SASL mechanism SCRAM-SHA-512 (after 314ms in state AUTH_REQ)",
            SCRAM,
            ["127.0.0.1:9193", "refused the SASL SCRAM-SHA-512", "KAFKA_SASL_PASSWORD"],
        ),
        (
            BROKER + 'SASL authentication error: {"status":"invalid_token"} (after 307ms in state AUTH_REQ)',
            OAUTH,
            ["rejected the OAuth token", "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"],
        ),
        (
            'Failed to acquire SASL OAUTHBEARER token: {"error":"invalid_client"}',
            OAUTH,
            ["https://idp.example/token", 'refused this client ({"error":"invalid_client"})', "CLIENT_SECRET"],
        ),
        (
            "Failed to acquire SASL OAUTHBEARER token: Must supply an unexpired token: now=1796073645838ms, "
            "exp=1796070045000ms",
            OAUTH,
            ["https://idp.example/token handed out a token that has already expired", "clock"],
        ),
        (
            BROKER + "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker "
            "certificate could not be verified (after 3ms in state SSL_HANDSHAKE)",
            SCRAM,
            [
                "did not pass this client's checks (certificate verify failed: broker certificate could not be",
                "it trusts /certs/ca.pem",
                "KAFKA_SSL_CA_LOCATION",
            ],
        ),
        (
            "ssl://127.0.0.1:9194/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert bad "
            "certificate: SSL alert number 42 (after 1ms in state APIVERSION_QUERY)",
            MTLS,
            ["127.0.0.1:9194", "refused this client's TLS certificate (/certs/client.pem)", "KEY_LOCATION"],
        ),
        (
            "FAIL [rdkafka#producer-1] [thrd:ssl://127.0.0.1:9092/bootstrap]: ssl://127.0.0.1:9092/bootstrap: "
            "SSL handshake failed: Disconnected: SSL connection closed by peer: connecting to a PLAINTEXT broker "
            "listener? (after 2ms in state SSL_HANDSHAKE)",
            MTLS,
            ["127.0.0.1:9092 is a plaintext listener", "KAFKA_SECURITY_PROTOCOL=SSL"],
        ),
    ],
)
def test_each_login_failure_is_one_sentence_naming_the_setting(text: str, login: Credentials, words: list[str]) -> None:
    sentence = diagnose(text, login)
    assert sentence is not None
    assert "\n" not in sentence
    for word in words:
        assert word in sentence


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state "
        "CONNECT)",
        "1/1 brokers are down",
        "sasl_ssl://127.0.0.1:9193/1: Disconnected (after 60000ms in state UP)",
        'Failed to acquire SASL OAUTHBEARER token: Failed to retrieve OIDC token from "https://idp/token": '
        "Timeout was reached",
        "Failed to acquire SASL OAUTHBEARER token: Failed to connect to idp port 443: Could not connect to server",
        'Failed to acquire SASL OAUTHBEARER token: {"error":"temporarily_unavailable"} (503)',
    ],
)
def test_failures_a_retry_may_cure_are_not_judged(text: str) -> None:
    assert diagnose(text, SCRAM) is None


def test_a_token_endpoint_answer_is_quoted_short_and_printable() -> None:
    sentence = diagnose("Failed to acquire SASL OAUTHBEARER token: invalid_client \x1b[2J" + "x" * 5000, OAUTH)
    assert sentence is not None
    assert "\x1b" not in sentence
    assert len(sentence) < 500


def test_plaintext_to_a_tls_listener_is_judged_only_when_time_runs_out_after_repeated_closes() -> None:
    watch = LoginWatch()
    watch.expect(PLAIN_TEXT)
    closed = (
        "FAIL [rdkafka#producer-1] [thrd:127.0.0.1:9193/bootstrap]: 127.0.0.1:9193/bootstrap: Disconnected: "
        "connection closed by peer: receive 0 after POLLIN (after 2ms in state APIVERSION_QUERY)"
    )
    for _ in range(CLOSED_AT_FIRST_REQUEST_LIMIT):
        watch.report(closed)  # the error callback's copy of a log line is not counted
    assert watch.closed_verdict() is None
    for _ in range(CLOSED_AT_FIRST_REQUEST_LIMIT - 1):
        watch.report_log(closed)
    assert watch.closed_verdict() is None, "one close could be a broker restarting"
    watch.report_log(closed)
    assert watch.verdict is None, "a broker still starting behind a proxy looks the same: never at once"
    verdict = watch.closed_verdict()
    assert verdict is not None
    assert "127.0.0.1:9193 closed the connection at the client's first request 3 times" in verdict
    assert "KAFKA_SECURITY_PROTOCOL" in verdict


def test_the_watch_keeps_the_first_verdict_and_forgets_it_for_a_new_login() -> None:
    watch = LoginWatch()
    watch.report(BROKER + "SASL authentication error: wrong")  # nothing expected yet: ignored
    assert watch.verdict is None
    watch.expect(SCRAM)
    watch.report(BROKER + "SASL authentication error: wrong")
    first = watch.verdict
    watch.report(BROKER + "SSL handshake failed: certificate verify failed")
    assert watch.verdict == first
    watch.expect(SCRAM)
    assert watch.verdict is None


# ACLs.
SETTINGS = load_settings(environ={}, env_file=None)


def test_each_program_gets_exactly_its_acls_and_no_wildcard() -> None:
    every = grants(SETTINGS)
    assert [g.describe() for g in every if g.program == "producer"] == ["WRITE on topic orders"]
    consumer = {g.describe() for g in every if g.program == "consumer" and g.required}
    assert consumer == {
        "READ on topic orders",
        "READ on topic orders-retry",
        "WRITE on topic orders-retry",
        "WRITE on topic orders-dlq",
        "READ on topic orders-stats",
        "WRITE on topic orders-stats",
        "READ on group order-pipeline",
        "WRITE on transactional id order-pipeline. (prefix)",
    }
    dlq = {g.describe() for g in every if g.program == "dlq" and g.required}
    assert dlq == {
        "READ on topic orders-dlq",
        "WRITE on topic orders",
        "READ on topic orders-dlq-replayed",
        "WRITE on topic orders-dlq-replayed",
        "WRITE on transactional id orders-dlq-replayed",
    }
    assert {g.program for g in every if not g.required} == {"consumer", "dlq"}
    assert all(g.operation == "DESCRIBE_CONFIGS" for g in every if not g.required)
    assert all("*" not in g.name and g.name for g in every)
    assert {g.resource for g in every} == {"TOPIC", "GROUP", "TRANSACTIONAL_ID"}, "nothing cluster-wide"
    with pytest.raises(ValueError, match="unknown program"):
        grants(SETTINGS, ["admin"])


def test_the_acls_follow_the_settings() -> None:
    settings = replace(SETTINGS, orders_topic="shop.orders", consumer_group="shop")
    names = {g.name for g in grants(settings)}
    assert {"shop.orders", "shop", "shop."} <= names
    assert "orders" not in names


def test_missing_grants_judge_only_what_kafka_reported() -> None:
    needed = grants(SETTINGS, ["consumer"])
    everything = frozenset({"READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"})
    permissions: dict[tuple[str, str], frozenset[str] | None] = {
        ("TOPIC", "orders"): everything,
        ("TOPIC", "orders-retry"): frozenset({"READ", "DESCRIBE"}),
        ("TOPIC", "orders-dlq"): frozenset(),
        ("TOPIC", "orders-stats"): None,  # not reported: not judged
        ("GROUP", "order-pipeline"): everything,
    }
    lacking = missing_grants(needed, permissions)
    assert [g.describe() for g in lacking] == ["WRITE on topic orders-retry", "WRITE on topic orders-dlq"]
    sentence = lacking_sentence("consumer", lacking)
    assert "WRITE on topic orders-retry (to schedule retries)" in sentence
    assert "scripts/acls.sh" in sentence


def test_require_stops_a_program_that_lacks_a_permission() -> None:
    def ask(topics: object, group: str) -> dict[tuple[str, str], frozenset[str] | None]:
        return {("TOPIC", "orders"): frozenset({"DESCRIBE"})}

    with pytest.raises(ConfigError, match="lacks permissions the producer needs: WRITE on topic orders"):
        require(SETTINGS, "producer", ask)
    require(SETTINGS, "stats", ask)  # READ on the stats topic was not reported: not judged


def test_a_refused_call_names_what_it_needed() -> None:
    sentence = denied_sentence("start transactions", "WRITE on transactional id g.host.0")
    assert sentence.startswith("Kafka refused to start transactions: this principal lacks WRITE on transactional id")


def test_the_printed_acls_are_also_kafkas_own_commands() -> None:
    lines = table("User:pipeline", grants(SETTINGS, ["consumer"]))
    assert any(
        "--operation Write --transactional-id order-pipeline. --resource-pattern-type prefixed" in line
        for line in lines
    )
    assert any("--operation DescribeConfigs --topic orders-dlq" in line for line in lines)
    assert sum("--add --allow-principal User:pipeline" in line for line in lines) == len(grants(SETTINGS, ["consumer"]))


def test_grant_descriptions_name_prefixes() -> None:
    grant = Grant("consumer", "WRITE", "TRANSACTIONAL_ID", "g.", "why", pattern="PREFIXED")
    assert grant.describe() == "WRITE on transactional id g. (prefix)"


# The registry.
def _registry_error(status: int) -> SchemaRegistryError:
    return SchemaRegistryError(status, status, "Unauthorized")


@pytest.mark.parametrize(
    ("error", "address", "words"),
    [
        (_registry_error(401), "https://r:8443", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"),
        (_registry_error(403), "https://r:8443", "denied this user access (HTTP 403)"),
        (
            OSError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer"),
            "https://r:8443",
            "(CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer): check "
            "SCHEMA_REGISTRY_SSL_CA_LOCATION",
        ),
        (OSError("[SSL: WRONG_VERSION_NUMBER] wrong version number"), "https://r:8081", "does not speak TLS"),
    ],
)
def test_registry_login_problems_name_the_setting(error: Exception, address: str, words: str) -> None:
    problem = registry_login_problem(error, address)
    assert problem is not None
    assert words in problem


def test_other_registry_failures_are_not_login_problems() -> None:
    assert registry_login_problem(_registry_error(500), "https://r") is None
    assert registry_login_problem(OSError("Server disconnected without sending a response."), "http://r") is None


# Secrets in output.
def test_every_secret_the_settings_hold_is_known() -> None:
    settings = build_settings(
        {
            "KAFKA_SASL_PASSWORD": "sasl-pw-1",
            "KAFKA_SSL_KEY_PASSWORD": "key-pw-2",
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "oauth-3",
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "reg:reg-pw-4",
            "SCHEMA_REGISTRY_URL": "https://u:url-pw-5@registry:8081",
        },
        "sasl.jaas.config=x password='jaas-6';\nbasic.auth.user.info=k:props-7\nclient.id=not-a-secret\n"
        "ssl.key.pem=-----BEGIN PRIVATE KEY-----8\nsasl.oauthbearer.token.endpoint.url=https://idp/token\n",
    )
    found = settings.secrets()
    for secret in ("sasl-pw-1", "key-pw-2", "oauth-3", "reg-pw-4", "url-pw-5", "u:url-pw-5", "k:props-7"):
        assert secret in found
    assert "x password='jaas-6';" in found
    assert "-----BEGIN PRIVATE KEY-----8" in found
    assert "not-a-secret" not in found
    assert "https://idp/token" not in found, "an address, shown in sentences"


def test_scrubbed_output_hides_every_secret_however_it_is_written() -> None:
    sink = io.StringIO()
    stream = ScrubbedStream(sink, Scrubber(["hunter22", "hunter2222", "on"]))
    print("password hunter2222 and hunter22; on", file=stream)
    stream.writelines(["hunter22\n"])
    stream.flush()
    assert sink.getvalue() == "password *** and ***; on\n***\n", "longest first; short values are not secrets"


def test_a_setting_given_replaces_the_files_spelling_under_librdkafkas_other_name() -> None:
    file = "sasl.mechanisms=PLAIN\nmetadata.broker.list=cloud:9092\n"
    from_file = build_settings({}, file).kafka_client_config()
    assert from_file["sasl.mechanisms"] == "PLAIN"
    assert from_file["metadata.broker.list"] == "cloud:9092"
    assert "bootstrap.servers" not in from_file, "the file's broker list is not doubled by the default"
    explicit = {
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_BOOTSTRAP_SERVERS": "h:1",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "p",
    }
    given = build_settings(explicit, file)
    conf = given.kafka_client_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["bootstrap.servers"] == "h:1"
    assert "sasl.mechanisms" not in conf
    assert "metadata.broker.list" not in conf


def test_an_unexpected_exception_is_printed_without_the_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(settings: object, *args: object) -> None:
        raise RuntimeError("a bug that quotes the password hunter2222")

    monkeypatch.setattr(cli, "run_producer", fail)
    secret = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "hunter2222",
    }
    assert cli.producer_main(lambda overrides: build_settings(secret), ["--count", "1"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: a bug that quotes the password ***" in err
    assert "hunter2222" not in err

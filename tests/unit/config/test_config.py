"""Settings: precedence (flag > environment > .env > default) and bad values named."""

import re
from decimal import Decimal
from pathlib import Path

import pytest

from config import ENV_NAMES, Settings, load_settings
from orderpipe.config.settings import build_settings
from orderpipe.errors import ConfigError


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text("KAFKA_BOOTSTRAP_SERVERS=from-dotenv:9092\nMAX_RETRIES=5\nORDERS_TOPIC=dotenv-orders\n")
    return path


def test_defaults_without_any_source() -> None:
    settings = load_settings(environ={}, env_file=None)
    assert settings == Settings()
    assert (settings.bootstrap_servers, settings.max_retries, settings.orders_partitions) == ("localhost:9092", 3, 3)
    assert settings.max_order_price_cents == 10_000_000
    assert settings.schema_registry_url == ""


def test_flag_beats_environment_beats_dotenv_beats_default(env_file: Path) -> None:
    settings = load_settings(
        overrides={"KAFKA_BOOTSTRAP_SERVERS": "from-flag:9092", "CONSUMER_GROUP": None},
        environ={"KAFKA_BOOTSTRAP_SERVERS": "from-env:9092", "MAX_RETRIES": "4"},
        env_file=env_file,
    )
    assert settings.bootstrap_servers == "from-flag:9092"  # flag
    assert settings.max_retries == 4  # environment over .env
    assert settings.orders_topic == "dotenv-orders"  # .env over default
    assert settings.consumer_group == "order-pipeline"  # a flag not given changes nothing


def test_every_variable_of_the_contract_is_read() -> None:
    assert set(ENV_NAMES) == {
        "KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "ORDERS_TOPIC", "RETRY_TOPIC", "DLQ_TOPIC",
        "STATS_TOPIC", "CONSUMER_GROUP", "ORDERS_PARTITIONS", "REPLICATION_FACTOR", "MIN_INSYNC_REPLICAS",
        "MAX_RETRIES",
        "RETRY_BACKOFF_MS", "RETRY_BACKOFF_MAX_MS", "MAX_ORDER_PRICE", "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CA_LOCATION",
        "KAFKA_SSL_CERTIFICATE_LOCATION", "KAFKA_SSL_KEY_LOCATION", "KAFKA_SSL_KEY_PASSWORD",
        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", "KAFKA_SASL_OAUTHBEARER_CLIENT_ID",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", "KAFKA_SASL_OAUTHBEARER_SCOPE", "KAFKA_CLIENT_CONFIG",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "SCHEMA_REGISTRY_SSL_CA_LOCATION",
        "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION", "SCHEMA_REGISTRY_SSL_KEY_LOCATION", "CREATE_TOPICS",
        "SCHEMA_REGISTRY_AUTO_REGISTER", "METRICS_PORT", "AVRO_WIRE_FORMAT", "AVRO_WRITER_SCHEMA",
    }  # fmt: skip


def test_env_example_lists_every_variable() -> None:
    listed = {
        line.split("=")[0].lstrip("# ")
        for line in (Path(__file__).parents[3] / ".env.example").read_text().splitlines()
        if "=" in line
    }
    assert set(ENV_NAMES) <= listed


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MAX_RETRIES", "three", "MAX_RETRIES must be a whole number from 0 to 100, got 'three'"),
        ("MAX_RETRIES", "-1", "MAX_RETRIES must be a whole number from 0 to 100"),
        ("MAX_RETRIES", "9" * 5000, "MAX_RETRIES must be a whole number from 0 to 100"),
        ("ORDERS_PARTITIONS", "0", "ORDERS_PARTITIONS must be a whole number from 1 to 10000"),
        ("REPLICATION_FACTOR", "1.5", "REPLICATION_FACTOR must be a whole number from 1 to 32"),
        ("RETRY_BACKOFF_MS", "soon", "RETRY_BACKOFF_MS must be a whole number from 0 to 86400000"),
        ("MAX_ORDER_PRICE", "1e999999", "MAX_ORDER_PRICE must be a positive amount in dollars up to"),
        ("SCHEMA_REGISTRY_URL", "u:s3cret@registry:8081", "got (hidden)"),
        ("MAX_ORDER_PRICE", "-5", "MAX_ORDER_PRICE must be a positive amount in dollars"),
        ("MAX_ORDER_PRICE", "NaN", "MAX_ORDER_PRICE must be a positive amount in dollars"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "KAFKA_BOOTSTRAP_SERVERS must be a comma-separated list of host:port"),
        ("KAFKA_BOOTSTRAP_SERVERS", "a:99999", "KAFKA_BOOTSTRAP_SERVERS must be a comma-separated list"),
        ("SCHEMA_REGISTRY_URL", "localhost:8081", "SCHEMA_REGISTRY_URL must be empty (no registry) or an http"),
        ("ORDERS_TOPIC", "orders topic", "ORDERS_TOPIC must be a Kafka topic name"),
        ("CONSUMER_GROUP", "  ", "CONSUMER_GROUP must be a non-empty consumer group name"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS", "KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL"),
        ("KAFKA_SASL_MECHANISM", "GSSAPI", "KAFKA_SASL_MECHANISM must be empty or one of PLAIN"),
    ],
)
def test_bad_values_are_named_with_what_was_expected(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={name: value}, env_file=None)
    assert expected in str(caught.value)


def test_all_bad_values_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"MAX_RETRIES": "x", "ORDERS_PARTITIONS": "y"}, env_file=None)
    assert "MAX_RETRIES" in str(caught.value)
    assert "ORDERS_PARTITIONS" in str(caught.value)


def test_the_topics_must_differ() -> None:
    with pytest.raises(ConfigError, match="must be four different topics, got orders, orders-retry, orders, "):
        load_settings(environ={"DLQ_TOPIC": "orders"}, env_file=None)


def test_backoff_cap_below_the_base_is_rejected() -> None:
    with pytest.raises(ConfigError, match="RETRY_BACKOFF_MAX_MS must be >= RETRY_BACKOFF_MS"):
        load_settings(environ={"RETRY_BACKOFF_MS": "5000", "RETRY_BACKOFF_MAX_MS": "1000"}, env_file=None)


def test_values_are_normalised() -> None:
    settings = load_settings(
        environ={
            "SCHEMA_REGISTRY_URL": " http://localhost:8081/apis/ccompat/v7/ ",
            "KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2",
            "MAX_ORDER_PRICE": "2500.50",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": "pw",
            "CREATE_TOPICS": " False ",
        },
        env_file=None,
    )
    assert settings.create_topics is False
    assert settings.schema_registry_url == "http://localhost:8081/apis/ccompat/v7"
    assert settings.bootstrap_servers == "a:1,b:2"
    assert settings.max_order_price == Decimal("2500.50")
    assert settings.max_order_price_cents == 250050
    assert settings.sasl_mechanism == "SCRAM-SHA-512"


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    settings = load_settings(
        environ={"KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "hunter2", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        env_file=None,
    )
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert settings.kafka_client_config()["sasl.password"] == "hunter2"


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().max_retries = 9  # type: ignore[misc]


def test_a_properties_file_is_merged_under_the_explicit_settings(tmp_path: Path) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text(
        "# from the provider\n"
        "bootstrap.servers=pkc-1.example.cloud:9092\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanisms=PLAIN\n"
        "sasl.username=KEY\n"
        "sasl.password=s3cret=with=equals\n"
        "\n"
        "! another comment\n"
    )
    settings = load_settings(environ={"KAFKA_CLIENT_CONFIG": str(properties)}, env_file=None)
    conf = settings.kafka_client_config()
    assert conf["bootstrap.servers"] == "pkc-1.example.cloud:9092", "a default does not replace the file's value"
    assert (conf["security.protocol"], conf["sasl.password"]) == ("SASL_SSL", "s3cret=with=equals")
    assert "s3cret" not in repr(settings)
    given = load_settings(
        environ={"KAFKA_CLIENT_CONFIG": str(properties), "KAFKA_BOOTSTRAP_SERVERS": "other:9093"}, env_file=None
    )
    assert given.kafka_client_config()["bootstrap.servers"] == "other:9093", "a given setting wins"


def test_a_properties_file_that_cannot_be_read_or_parsed_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KAFKA_CLIENT_CONFIG must be a readable UTF-8 properties file"):
        load_settings(environ={"KAFKA_CLIENT_CONFIG": str(tmp_path / "missing")}, env_file=None)
    broken = tmp_path / "broken.properties"
    broken.write_text("bootstrap.servers=a:1\nsasl.password hunter2\n")
    with pytest.raises(ConfigError, match="line 2 is not one") as caught:
        load_settings(environ={"KAFKA_CLIENT_CONFIG": str(broken)}, env_file=None)
    assert "hunter2" not in str(caught.value)


def test_mutual_tls_oauth_and_registry_settings_reach_the_clients() -> None:
    settings = load_settings(
        environ={
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp.example/token",
            "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "pipeline",
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "oauth-s3cret",
            "KAFKA_SASL_OAUTHBEARER_SCOPE": "kafka",
            "KAFKA_SSL_CERTIFICATE_LOCATION": "client.pem",
            "KAFKA_SSL_KEY_LOCATION": "client.key",
            "KAFKA_SSL_KEY_PASSWORD": "key-s3cret",
            "SCHEMA_REGISTRY_URL": "https://registry.example",
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "reader:reg-s3cret",
            "SCHEMA_REGISTRY_SSL_CA_LOCATION": "ca.pem",
            "SCHEMA_REGISTRY_AUTO_REGISTER": "false",
        },
        env_file=None,
    )
    conf = settings.kafka_client_config()
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["sasl.oauthbearer.client.secret"] == "oauth-s3cret"
    assert (conf["ssl.certificate.location"], conf["ssl.key.password"]) == ("client.pem", "key-s3cret")
    assert settings.registry_client_config() == {
        "url": "https://registry.example",
        "basic.auth.user.info": "reader:reg-s3cret",
        "ssl.ca.location": "ca.pem",
    }
    assert settings.registry_auto_register is False
    assert not any(secret in repr(settings) for secret in ("oauth-s3cret", "key-s3cret", "reg-s3cret"))


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SASL_MECHANISM": "OAUTHBEARER", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "needs KAFKA_SASL_OAUTHBEARER",
        ),
        (
            {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
            "needs KAFKA_SECURITY_PROTOCOL SASL_SSL or SASL_PLAINTEXT",
        ),
        ({"KAFKA_SSL_CERTIFICATE_LOCATION": "c.pem"}, "go together"),
        ({"CREATE_TOPICS": "maybe"}, "CREATE_TOPICS must be true or false"),
        ({"SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "no-colon-s3cret"}, "got (hidden)"),
    ],
)
def test_settings_that_only_work_together_are_named(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
        load_settings(environ=environ, env_file=None)
    assert "s3cret" not in str(caught.value)


def test_a_writer_schema_in_dotenv_without_raw_is_refused_and_a_flag_can_complete_it(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("AVRO_WRITER_SCHEMA=reference-order.avsc\n")
    with pytest.raises(ConfigError, match="AVRO_WRITER_SCHEMA needs AVRO_WIRE_FORMAT=raw, got AVRO_WIRE_FORMAT=auto"):
        load_settings(environ={}, env_file=dotenv)
    settings = load_settings(overrides={"AVRO_WIRE_FORMAT": "raw"}, environ={}, env_file=dotenv)
    assert (settings.avro_wire_format, settings.avro_writer_schema) == ("raw", "reference-order.avsc")


def test_the_example_env_file_loads_as_it_is() -> None:
    settings = load_settings(environ={}, env_file=Path(__file__).parents[3] / ".env.example")
    assert (settings.avro_wire_format, settings.avro_writer_schema) == ("auto", "")


def test_min_insync_replicas_follows_the_replication_factor_unless_given() -> None:
    assert build_settings({}).min_isr == 1
    assert build_settings({"REPLICATION_FACTOR": "3"}).min_isr == 2
    assert build_settings({"REPLICATION_FACTOR": "3", "MIN_INSYNC_REPLICAS": ""}).min_isr == 2
    assert build_settings({"REPLICATION_FACTOR": "5", "MIN_INSYNC_REPLICAS": "3"}).min_isr == 3
    with pytest.raises(ConfigError, match=r"MIN_INSYNC_REPLICAS must be at most REPLICATION_FACTOR \(1\)"):
        build_settings({"MIN_INSYNC_REPLICAS": "2"})
    with pytest.raises(ConfigError, match="MIN_INSYNC_REPLICAS must be a whole number from 1 to 32, or empty"):
        build_settings({"MIN_INSYNC_REPLICAS": "two"})

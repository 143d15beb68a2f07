"""Command-line handling that needs no broker: bad flags and settings exit 2, by name."""

import gc
from collections.abc import Callable
from pathlib import Path

import pytest

import consumer
import producer
from orderpipe.programs.runtime import GC_YOUNG_THRESHOLD, gc_tuned_for_throughput


@pytest.mark.parametrize(
    ("main", "argv", "expected"),
    [
        (producer.main, ["--invalid-rate", "1.5"], "expected a fraction from 0 to 1, got '1.5'"),
        (producer.main, ["--rate", "-3"], "expected a number from 0 to 1e+06, got '-3'"),
        (producer.main, ["--rate", "inf"], "expected a number from 0 to 1e+06, got 'inf'"),
        (producer.main, ["--rate", "nan"], "expected a number from 0 to 1e+06, got 'nan'"),
        (producer.main, ["--count", "many"], "expected a whole number from 0 to 1e+12, got 'many'"),
        (consumer.main, ["--failure-rate", "abc"], "expected a fraction from 0 to 1"),
        (consumer.main, ["--idle-exit", "0"], "expected a number more than 0 to 86400, got '0'"),
        (consumer.main, ["--batch-size", "0"], "expected a whole number from 1 to 100000, got '0'"),
        (consumer.main, ["--batch-size", "5000000"], "expected a whole number from 1 to 100000, got '5000000'"),
        (consumer.main, ["--commit-interval-ms", "1e9"], "expected a whole number from 1 to 10000, got '1e9'"),
        (consumer.main, ["--quiet", "--verbose"], "not allowed with argument"),
        (consumer.main, ["--delivery", "twice"], "invalid choice: 'twice'"),
    ],
)
def test_bad_flags_exit_2_with_what_was_expected(main, argv, expected, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("main", [producer.main, consumer.main])
def test_a_bad_setting_exits_2_before_connecting(main, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env in the way
    monkeypatch.setenv("MAX_RETRIES", "lots")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # would take seconds if it connected
    assert main(["--count", "1"] if main is producer.main else []) == 2
    assert "MAX_RETRIES must be a whole number from 0 to 100, got 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("main", [producer.main, consumer.main])
def test_help_documents_every_contract_flag(main, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    flags = (
        ["--count", "--rate", "--invalid-rate", "--poison-rate"]
        if main is producer.main
        else ["--failure-rate", "--idle-exit", "--group"]
    )
    for flag in [*flags, "--seed", "--quiet", "--verbose", "--wire-format", "--writer-schema", "--plain"]:
        assert flag in text
    assert "(AVRO_WIRE_FORMAT, default auto)" in text
    assert "(AVRO_WRITER_SCHEMA)" in text


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A directory with no developer's .env, and a broker address that would take seconds if anything connected."""
    monkeypatch.chdir(tmp_path)
    for name in ("AVRO_WIRE_FORMAT", "AVRO_WRITER_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    return tmp_path


def _args(main: Callable[[list[str]], int], *flags: str) -> list[str]:
    return [*flags, "--count", "1"] if main is producer.main else [*flags, "--idle-exit", "1"]


@pytest.mark.parametrize("main", [producer.main, consumer.main])
def test_a_bad_wire_format_flag_is_named_by_its_setting_before_connecting(main, nowhere, capsys) -> None:
    assert main(_args(main, "--wire-format", "bare")) == 2
    err = capsys.readouterr().err
    assert err == "error: AVRO_WIRE_FORMAT must be one of auto, confluent, single-object, raw, got 'bare'\n"


@pytest.mark.parametrize("main", [producer.main, consumer.main])
def test_a_writer_schema_flag_without_raw_is_refused_naming_both_settings(main, nowhere, capsys) -> None:
    assert main(_args(main, "--writer-schema", "reference-order.avsc")) == 2
    assert "error: AVRO_WRITER_SCHEMA needs AVRO_WIRE_FORMAT=raw, got AVRO_WIRE_FORMAT=auto" in capsys.readouterr().err


@pytest.mark.parametrize("main", [producer.main, consumer.main])
def test_the_wire_flags_beat_the_environment_which_beats_dotenv(main, nowhere, monkeypatch, capsys) -> None:
    (nowhere / ".env").write_text("AVRO_WIRE_FORMAT=confluent\nAVRO_WRITER_SCHEMA=from-dotenv.avsc\n")
    monkeypatch.setenv("AVRO_WIRE_FORMAT", "single-object")
    # The environment's single-object over .env's confluent, and .env's writer schema: refused together.
    assert main(_args(main)) == 2
    assert "got AVRO_WIRE_FORMAT=single-object" in capsys.readouterr().err
    # The flags over both: raw with the flag's writer schema, read (and found missing) before connecting.
    assert main(_args(main, "--wire-format", "RAW", "--writer-schema", "from-flag.avsc")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: AVRO_WRITER_SCHEMA (from-flag.avsc) cannot be read"), err


def test_the_programs_collect_garbage_less_often_while_they_run_and_leave_the_collector_as_it_was() -> None:
    before = gc.get_threshold()
    with gc_tuned_for_throughput():
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0  # the start-up's objects are set aside
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

"""Why a Kafka client cannot connect, in one sentence, from what librdkafka reports.

librdkafka keeps retrying a connection that fails for a reason no retry can cure
(a wrong password, an untrusted certificate, TLS spoken to a plaintext port), and
the call that waited only says "Broker transport failure". The cause is in its
error callback and its log lines. `LoginWatch` reads both (each client of the
process reports to it) and `diagnose` turns a report into a sentence that says
which of these it is and which setting to check; the programs then stop with exit
code 2 instead of waiting for a broker that will never let them in.

Reports from the broker and the token endpoint are untrusted text: only a short,
printable excerpt of them is ever quoted.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from orderpipe.text import printable

__all__ = ["Credentials", "LoginWatch", "diagnose"]

# A connection closed at the first request, this many times, is taken for plaintext
# spoken to a TLS listener (once could be a broker restarting).
CLOSED_AT_FIRST_REQUEST_LIMIT = 3
EXCERPT = 120
_TOKEN_ENDPOINT_REASON = re.compile(r"Failed to acquire SASL OAUTHBEARER token: (.*)", re.S)
# librdkafka names a broker connection like "sasl_ssl://127.0.0.1:9193/bootstrap" or "host:9092/1".
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:]+\]:\d+|[\w.\-]+:\d+)/(?:bootstrap|\d+)")


@dataclass(frozen=True)
class Credentials:
    """What the client was told to log in with: enough to name the settings to check."""

    security_protocol: str
    sasl_mechanism: str
    ssl_ca_location: str
    ssl_certificate_location: str
    token_endpoint_url: str


def _address(text: str) -> str:
    match = _ADDRESS.search(text)
    return match.group(1) if match else "the broker"


def diagnose(text: str, login: Credentials) -> str | None:
    """The sentence for a failure no retry can cure, or None when `text` is not one."""
    where = _address(text)
    if "Failed to acquire SASL OAUTHBEARER token" in text:
        match = _TOKEN_ENDPOINT_REASON.search(text)
        reason = printable(match.group(1).strip(), EXCERPT) if match else "no reason given"
        return (
            f"the OAuth token endpoint {login.token_endpoint_url or '(none set)'} gave no token ({reason}): "
            "check KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL, KAFKA_SASL_OAUTHBEARER_CLIENT_ID and "
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"
        )
    if "SASL authentication error" in text or "SASL authentication failed" in text:
        if login.sasl_mechanism == "OAUTHBEARER" or "invalid_token" in text:
            return (
                f"the broker at {where} rejected the OAuth token (its signature, issuer, audience, scope or "
                "expiry did not pass the broker's checks): check KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL and "
                "KAFKA_SASL_OAUTHBEARER_SCOPE, and that the broker trusts that identity provider"
            )
        return (
            f"the broker at {where} refused the SASL {login.sasl_mechanism or 'login'} (wrong user name or "
            "password, or a mechanism it does not accept): check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD "
            "and KAFKA_SASL_MECHANISM"
        )
    if "certificate verify failed" in text:
        trusted = login.ssl_ca_location or "the system's CA certificates (KAFKA_SSL_CA_LOCATION is not set)"
        return (
            f"the TLS certificate of the broker at {where} is not signed by a CA this client trusts ({trusted}): "
            "check KAFKA_SSL_CA_LOCATION"
        )
    if re.search(r"alert (bad certificate|certificate required|unknown ca|certificate unknown)", text):
        certificate = login.ssl_certificate_location or "none: KAFKA_SSL_CERTIFICATE_LOCATION is not set"
        return (
            f"the broker at {where} refused this client's TLS certificate ({certificate}): check "
            "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION, and that the broker trusts the CA "
            "that signed the certificate"
        )
    if "connecting to a PLAINTEXT broker listener" in text or "wrong version number" in text:
        return (
            f"{where} is a plaintext listener and this client speaks TLS to it "
            f"(KAFKA_SECURITY_PROTOCOL={login.security_protocol}): check KAFKA_SECURITY_PROTOCOL and "
            "KAFKA_BOOTSTRAP_SERVERS"
        )
    return None


def _closed_at_first_request(text: str, login: Credentials) -> bool:
    """A plaintext client whose connection the listener closed before answering its first request."""
    return (
        login.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT")
        and "Disconnected" in text
        and ("APIVERSION_QUERY" in text or "requesting ApiVersion" in text)
    )


class LoginWatch:
    """Collects librdkafka's reports from every client of the process; keeps the first verdict.

    librdkafka calls `report` from its own threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._login: Credentials | None = None
        self._verdict: str | None = None
        self._closed_at_first_request: dict[str, int] = {}

    def expect(self, login: Credentials) -> None:
        """Starts watching for clients that log in with `login` (forgetting earlier verdicts)."""
        with self._lock:
            self._login, self._verdict = login, None
            self._closed_at_first_request.clear()

    @property
    def verdict(self) -> str | None:
        with self._lock:
            return self._verdict

    def report(self, text: str) -> None:
        with self._lock:
            if self._login is None or self._verdict is not None:
                return
            verdict = diagnose(text, self._login)
            if verdict is None and _closed_at_first_request(text, self._login):
                where = _address(text)
                count = self._closed_at_first_request.get(where, 0) + 1
                self._closed_at_first_request[where] = count
                if count >= CLOSED_AT_FIRST_REQUEST_LIMIT:
                    verdict = (
                        f"{where} closed the connection at the client's first request, as a TLS listener does "
                        f"when spoken to in plaintext (KAFKA_SECURITY_PROTOCOL={self._login.security_protocol}): "
                        "check KAFKA_SECURITY_PROTOCOL (SSL or SASL_SSL for a TLS listener) and KAFKA_BOOTSTRAP_SERVERS"
                    )
            self._verdict = verdict

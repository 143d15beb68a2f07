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

from orderpipe.text import printable, redact

__all__ = ["Credentials", "LoginWatch", "diagnose"]

# A connection closed at the first request, this many times before the connection
# attempt runs out of time, is taken for plaintext spoken to a TLS listener (once could
# be a broker restarting).
CLOSED_AT_FIRST_REQUEST_LIMIT = 3
EXCERPT = 120
_TOKEN_ENDPOINT_REASON = re.compile(r"Failed to acquire SASL OAUTHBEARER token: (.*)", re.S)
# A token endpoint's answers that refuse the client for good (RFC 6749 section 5.2), or its 4xx status.
_CLIENT_REFUSED = re.compile(
    r"invalid_client|unauthorized_client|invalid_scope|invalid_grant|invalid_request|access_denied|"
    r"unsupported_grant_type|\((400|401|403)\)"
)
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


def _excerpt(text: str, after: str) -> str:
    """The reason librdkafka gave, from `after` on, without its "(after 3ms in state X)" tail."""
    reason = text[text.index(after) :] if after in text else text
    return printable(re.sub(r"\s*\(after \d+ms in state \w+\)\s*$", "", reason).strip(), EXCERPT)


def diagnose(text: str, login: Credentials) -> str | None:
    """The sentence for a failure no retry can cure, or None when `text` is not one."""
    where = _address(text)
    if "Failed to acquire SASL OAUTHBEARER token" in text:
        match = _TOKEN_ENDPOINT_REASON.search(text)
        reason = match.group(1).strip() if match else ""
        if "unexpired token" in reason:
            return (
                f"the OAuth token endpoint {redact(login.token_endpoint_url) or '(none set)'} handed out a token "
                f"that has already expired ({printable(reason, EXCERPT)}): check this machine's clock and the "
                "token lifetime at the identity provider (KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL)"
            )
        if not _CLIENT_REFUSED.search(reason):
            return None  # the endpoint was slow, unreachable or failing: that may pass
        return (
            f"the OAuth token endpoint {redact(login.token_endpoint_url) or '(none set)'} refused this client "
            f"({printable(reason, EXCERPT)}): check KAFKA_SASL_OAUTHBEARER_CLIENT_ID, "
            "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET and KAFKA_SASL_OAUTHBEARER_SCOPE"
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
        trusted = login.ssl_ca_location or "the system's CA certificates, as KAFKA_SSL_CA_LOCATION is not set"
        return (
            f"the TLS certificate of the broker at {where} did not pass this client's checks "
            f"({_excerpt(text, 'certificate verify failed')}); it trusts {trusted}: check KAFKA_SSL_CA_LOCATION "
            "(the CA that signed the broker's certificate), and that the certificate names this host and is "
            "not expired"
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

    librdkafka reports through the clients' error callbacks and loggers, on the
    thread that polls a client and on its own threads.
    """

    def __init__(self) -> None:
        # Re-entrant: a client destroyed while a report is being judged reports its last words.
        self._lock = threading.RLock()
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
        """A failure no retry can cure, as soon as one is reported."""
        with self._lock:
            return self._verdict

    def report(self, text: str) -> None:
        """An error from a client's error callback."""
        with self._lock:
            if self._login is not None and self._verdict is None:
                self._verdict = diagnose(text, self._login)

    def report_log(self, text: str) -> None:
        """A line of a client's log; connections closed at the first request are counted here only."""
        self.report(text)
        with self._lock:
            if self._login is not None and _closed_at_first_request(text, self._login):
                where = _address(text)
                self._closed_at_first_request[where] = self._closed_at_first_request.get(where, 0) + 1

    def closed_verdict(self) -> str | None:
        """Asked once the connection attempt has run out of time: was it plaintext to a TLS listener?

        Only then, since a port that accepts and closes also fits a broker still
        starting behind a proxy (Docker's port forwarding, a load balancer).
        """
        with self._lock:
            if self._login is None:
                return None
            for where, count in self._closed_at_first_request.items():
                if count >= CLOSED_AT_FIRST_REQUEST_LIMIT:
                    return (
                        f"{where} closed the connection at the client's first request {count} times, as a TLS "
                        f"listener does when spoken to in plaintext (KAFKA_SECURITY_PROTOCOL="
                        f"{self._login.security_protocol}), or a proxy in front of a broker that is not up: check "
                        "KAFKA_SECURITY_PROTOCOL (SSL or SASL_SSL for a TLS listener) and KAFKA_BOOTSTRAP_SERVERS"
                    )
            return None

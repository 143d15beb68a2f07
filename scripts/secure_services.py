"""The two HTTP services of the secured test cluster (`scripts/broker.sh secure up`).

- An OAuth 2 token endpoint for the client-credentials grant, and the JWKS the
  Kafka broker checks tokens against: a stand-in for the identity provider
  (Okta, Azure AD, Keycloak) a company cluster would use. Tokens are RS256 JWTs.
  A client listed with `"key": "rogue"` gets tokens signed with a key the JWKS
  does not publish, and one listed with `"expired": true` tokens that expired an
  hour ago, so that the broker rejects them (for the tests of those errors).
- The schema registry's HTTPS front door with basic authentication: it checks the
  credentials and forwards each request to the plain registry on loopback.

Everything it needs is in the directory it is given (written by broker.sh):
tls/broker.pem and tls/broker.key (its TLS certificate), tls/oauth-signing.key and
tls/oauth-rogue.key (RSA keys), oauth-clients.json ({client id: {"secret", "key"}})
and registry-user.txt (`user:password`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import http.client
import json
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KEY_ID = "orderpipe-1"
AUDIENCE = "orderpipe-kafka"
TOKEN_LIFETIME_S = 3600
PROXY_TIMEOUT_S = 30
MAX_BODY = 1_000_000  # a registry request (a schema) is far smaller
# Request headers the registry front door does not pass on: the credentials it checked,
# and the hop-by-hop ones (it reads bodies by Content-Length and answers in full).
NOT_FORWARDED = frozenset({"authorization", "host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(number: int) -> str:
    return _b64(number.to_bytes((number.bit_length() + 7) // 8, "big"))


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


class Issuer:
    """Signs tokens for the clients it knows and publishes its verification key."""

    def __init__(self, directory: Path, issuer: str) -> None:
        self.issuer = issuer
        self._keys = {
            "good": _load_key(directory / "tls" / "oauth-signing.key"),
            "rogue": _load_key(directory / "tls" / "oauth-rogue.key"),
        }
        self._clients: dict[str, dict[str, Any]] = json.loads((directory / "oauth-clients.json").read_text())

    def jwks(self) -> dict[str, Any]:
        numbers = self._keys["good"].public_key().public_numbers()
        key = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": KEY_ID, "n": _uint(numbers.n), "e": _uint(numbers.e)}
        return {"keys": [key]}

    def token(self, client_id: str, secret: str, scope: str) -> str | None:
        """A signed token for a client whose secret matches, else None."""
        client = self._clients.get(client_id)
        if client is None or not hmac.compare_digest(client["secret"].encode(), secret.encode()):
            return None
        # A client listed with "expired": true gets a token that expired an hour ago.
        now = int(time.time()) - (2 * TOKEN_LIFETIME_S if client.get("expired") else 0)
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": client_id,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_S,
        }
        if scope:  # Kafka refuses a token whose scope claim is empty
            claims["scope"] = scope
        header = {"alg": "RS256", "typ": "JWT", "kid": KEY_ID}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        key = self._keys[client.get("key", "good")]
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


def _basic_credentials(header: str | None, form_encoded: bool = False) -> tuple[str, str] | None:
    """The user and password of a Basic Authorization header.

    OAuth clients form-encode the client id and secret before joining them (RFC 6749
    section 2.3.1); plain basic authentication does not.
    """
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if form_encoded:
        return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
    return user, password


class _Quiet(BaseHTTPRequestHandler):
    """A handler that logs one line per request without its headers (they hold credentials)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.server.server_address[1]!s} {format % args}", flush=True)  # type: ignore[index]

    def reply(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def body(self) -> bytes:
        """The request body; a length that is not a number, or over MAX_BODY, reads nothing."""
        length = self.headers.get("Content-Length") or "0"
        size = int(length) if length.isascii() and length.isdigit() and len(length) < 10 else 0
        if size > MAX_BODY:
            self.close_connection = True  # the unread body must not be taken for the next request
            return b""
        return self.rfile.read(size)


def token_handler(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    class TokenHandler(_Quiet):
        def do_GET(self) -> None:
            if self.path == "/oauth/jwks":
                self.reply(200, json.dumps(issuer.jwks()).encode())
            else:
                self.reply(404, b'{"error":"not_found"}')

        def do_POST(self) -> None:
            form = urllib.parse.parse_qs(self.body().decode(errors="replace"))
            if self.path != "/oauth/token" or form.get("grant_type") != ["client_credentials"]:
                self.reply(400, b'{"error":"unsupported_grant_type"}')
                return
            credentials = _basic_credentials(self.headers.get("Authorization"), form_encoded=True)
            if credentials is None:
                credentials = (form.get("client_id", [""])[0], form.get("client_secret", [""])[0])
            token = issuer.token(*credentials, scope=form.get("scope", [""])[0])
            if token is None:
                self.reply(401, b'{"error":"invalid_client"}')
                return
            answer = {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S}
            self.reply(200, json.dumps(answer).encode())

    return TokenHandler


def registry_handler(user_info: str, upstream: str) -> type[BaseHTTPRequestHandler]:
    target = urllib.parse.urlsplit(upstream)
    user, _, password = user_info.partition(":")
    expected = (user, password)

    class RegistryHandler(_Quiet):
        def forward(self) -> None:
            credentials = _basic_credentials(self.headers.get("Authorization"))
            if credentials is None or not all(
                hmac.compare_digest(a.encode(), b.encode()) for a, b in zip(credentials, expected, strict=True)
            ):
                body = b'{"error_code":401,"message":"Unauthorized"}'
                self.reply(401, body, WWW_Authenticate='Basic realm="schema-registry"')
                return
            body = self.body()
            connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=PROXY_TIMEOUT_S)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_FORWARDED}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            except OSError as exc:
                self.reply(502, json.dumps({"error_code": 502, "message": f"registry unreachable: {exc}"}).encode())
                return
            finally:
                connection.close()
            self.reply(answer.status, data, answer.getheader("Content-Type") or "application/json")

        do_GET = do_POST = do_PUT = do_DELETE = forward

    return RegistryHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token-port", type=int, required=True)
    parser.add_argument("--registry-port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the plain registry, e.g. http://127.0.0.1:8081")
    args = parser.parse_args()

    issuer = Issuer(args.dir, f"http://{args.host}:{args.token_port}")
    tokens = ThreadingHTTPServer((args.host, args.token_port), token_handler(issuer))
    user_info = (args.dir / "registry-user.txt").read_text().strip()
    registry = ThreadingHTTPServer((args.host, args.registry_port), registry_handler(user_info, args.upstream))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.dir / "tls" / "broker.pem", args.dir / "tls" / "broker.key")
    # The handshake happens in the request's thread, so a client that never
    # completes one cannot hold up the others.
    registry.socket = context.wrap_socket(registry.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    token_url = f"http://{args.host}:{args.token_port}/oauth/token"
    print(f"token endpoint on {token_url}, registry on https://{args.host}:{args.registry_port}", flush=True)
    registry.serve_forever()


if __name__ == "__main__":
    main()

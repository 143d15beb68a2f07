#!/usr/bin/env bash
# A secured single-node Kafka for trying and testing the security settings, from the
# same Maven jars as scripts/broker.sh and without Docker:
#
#   127.0.0.1:9193  SASL_SSL: SCRAM-SHA-512, PLAIN, and OAUTHBEARER (JWTs checked
#                   against the local token endpoint's JWKS)
#   127.0.0.1:9194  SSL with client certificates required (mutual TLS); the principal
#                   is the certificate's CN
#   127.0.0.1:9195  the KRaft controller (mutual TLS, the broker's own certificate)
#   127.0.0.1:9196  OAuth token endpoint (/oauth/token) and JWKS (/oauth/jwks)
#   127.0.0.1:8443  the schema registry over HTTPS with basic authentication, in
#                   front of the plain registry on 8081 (started if it is not running)
#
# The broker runs the StandardAuthorizer with allow.everyone.if.no.acl.found=false:
# only the super users `admin` (SCRAM) and `kafka-broker` (its own certificate) may do
# anything without ACLs. scripts/acls.sh grants a principal what each program needs.
#
# On its first start it generates, under .cache/secure/ (git-ignored):
#   tls/ca.pem                the CA every certificate here is signed by
#   tls/client.pem, .key      a client certificate, CN=pipeline, key encrypted
#                             with CLIENT_KEY_PASSWORD
#   tls/rogue-ca.pem          a second CA, and tls/rogue-client.pem/.key signed by
#                             it (a certificate the broker must refuse)
#   secrets.env               every password and client secret (mode 600), random
#   admin.properties          Java client settings of the admin user, for Kafka's tools
# Delete .cache/secure to start again from nothing.
#
# Usage: scripts/broker.sh secure up | down | status
set -euo pipefail

# shellcheck source=broker.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/broker.sh"

SECURE="$ROOT/.cache/secure"
TLS="$SECURE/tls"
SECURE_LOGS="$SECURE/logs"
SECURE_RUN="$SECURE/run"
SASL_PORT=9193
MTLS_PORT=9194
SECURE_CONTROLLER_PORT=9195
TOKEN_PORT=9196
REGISTRY_TLS_PORT=8443
VENV_PYTHON="$ROOT/.venv/bin/python"

secret() { openssl rand -hex 16; }

sign() {  # sign NAME CN CA: a key and a certificate for CN, signed by CA (ca or rogue-ca)
  local name=$1 cn=$2 ca=$3
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TLS/$name.key" 2>/dev/null
  openssl req -new -key "$TLS/$name.key" -subj "/CN=$cn" -out "$TLS/$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$TLS/san.ext"
  openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/$ca.pem" -CAkey "$TLS/$ca.key" -CAcreateserial \
    -days 825 -sha256 -extfile "$TLS/san.ext" -out "$TLS/$name.pem" 2>/dev/null
  rm -f "$TLS/$name.csr"
}

make_ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TLS/$1.key" -out "$TLS/$1.pem" -days 825 \
    -subj "/CN=$2" 2>/dev/null
}

# Certificates, keys and secrets, once.
generate() {
  [ -f "$SECURE/.generated" ] && return
  command -v openssl >/dev/null 2>&1 || die "openssl is needed to make the test certificates and none was found: install it (for example 'apt-get install openssl')."
  say "Generating a CA, certificates and secrets in $SECURE ..."
  rm -rf "$SECURE"
  mkdir -p "$TLS" "$SECURE_LOGS" "$SECURE_RUN"
  chmod 700 "$SECURE"
  make_ca ca "orderpipe test CA"
  make_ca rogue-ca "some other CA"
  sign broker kafka-broker ca
  cat "$TLS/broker.key" "$TLS/broker.pem" >"$TLS/broker-bundle.pem"
  local client_key_password
  client_key_password=$(secret)
  sign client pipeline ca
  CLIENT_KEY_PASSWORD=$client_key_password openssl pkcs8 -topk8 -v2 aes-256-cbc -in "$TLS/client.key" \
    -out "$TLS/client.key.enc" -passout env:CLIENT_KEY_PASSWORD 2>/dev/null
  mv "$TLS/client.key.enc" "$TLS/client.key"
  sign rogue-client pipeline rogue-ca
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TLS/oauth-signing.key" 2>/dev/null
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TLS/oauth-rogue.key" 2>/dev/null
  (
    umask 077
    cat >"$SECURE/secrets.env" <<EOF
ADMIN_PASSWORD=$(secret)
PIPELINE_PASSWORD=$(secret)
PLAIN_PASSWORD=$(secret)
OAUTH_CLIENT_SECRET=$(secret)
OAUTH_ROGUE_SECRET=$(secret)
REGISTRY_PASSWORD=$(secret)
CLIENT_KEY_PASSWORD=$client_key_password
EOF
  )
  # shellcheck source=/dev/null
  source "$SECURE/secrets.env"
  printf '{"pipeline": {"secret": "%s"}, "rogue": {"secret": "%s", "key": "rogue"}, "expired": {"secret": "%s", "expired": true}}\n' \
    "$OAUTH_CLIENT_SECRET" "$OAUTH_ROGUE_SECRET" "$OAUTH_ROGUE_SECRET" >"$SECURE/oauth-clients.json"
  printf 'registry:%s\n' "$REGISTRY_PASSWORD" >"$SECURE/registry-user.txt"
  cat >"$SECURE/admin.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
EOF
  chmod 600 "$SECURE"/*.json "$SECURE"/*.txt "$SECURE"/*.properties "$TLS"/*.key "$TLS/broker-bundle.pem"
  touch "$SECURE/.generated"
}

write_secure_config() {
  # shellcheck source=/dev/null
  source "$SECURE/secrets.env"
  local issuer="http://$KAFKA_HOST:$TOKEN_PORT"
  (
    umask 077
    cat >"$SECURE/server.properties" <<EOF
# Secured single-node KRaft broker for tests (written by scripts/secure_broker.sh).
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$SECURE_CONTROLLER_PORT
listeners=SASL_SSL://$KAFKA_HOST:$SASL_PORT,SSL://$KAFKA_HOST:$MTLS_PORT,CONTROLLER://$KAFKA_HOST:$SECURE_CONTROLLER_PORT
advertised.listeners=SASL_SSL://$KAFKA_HOST:$SASL_PORT,SSL://$KAFKA_HOST:$MTLS_PORT
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=SSL
log.dirs=$SECURE/kafka-data
$(single_node_settings)

ssl.keystore.type=PEM
ssl.keystore.location=$TLS/broker-bundle.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
listener.name.ssl.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*\$/\$1/,DEFAULT

sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN,OAUTHBEARER
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_admin="$ADMIN_PASSWORD" user_pipeline="$PLAIN_PASSWORD";
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
sasl.oauthbearer.jwks.endpoint.url=$issuer/oauth/jwks
# Named explicitly: Kafka 4.1's default (DefaultJwtValidator), built by the callback
# handler without a key resolver, checks a token's claims but not its signature.
sasl.oauthbearer.jwt.validator.class=org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator
sasl.oauthbearer.expected.audience=orderpipe-kafka
sasl.oauthbearer.expected.issuer=$issuer

authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:kafka-broker
EOF
  )
}

start_services() {
  if pid_alive "$SECURE_RUN/services.pid"; then return; fi
  [ -x "$VENV_PYTHON" ] ||
    die "the secured broker's token endpoint and registry front door run in the project's Python environment: run 'scripts/setup.sh requirements-dev.txt' first."
  for port in $TOKEN_PORT $REGISTRY_TLS_PORT; do
    port_open "$KAFKA_HOST" "$port" && die "$KAFKA_HOST:$port is already taken by another process: stop it and try again."
  done
  nohup "$VENV_PYTHON" "$ROOT/scripts/secure_services.py" --dir "$SECURE" --host "$KAFKA_HOST" \
    --token-port "$TOKEN_PORT" --registry-port "$REGISTRY_TLS_PORT" \
    --upstream "http://$KAFKA_HOST:$REGISTRY_PORT" >"$SECURE_LOGS/services.log" 2>&1 &
  echo $! >"$SECURE_RUN/services.pid"
}

start_secure_kafka() {
  if pid_alive "$SECURE_RUN/kafka.pid"; then return; fi
  for port in $SASL_PORT $MTLS_PORT $SECURE_CONTROLLER_PORT; do
    port_open "$KAFKA_HOST" "$port" && die "$KAFKA_HOST:$port is already taken by another process: stop it and try again."
  done
  write_secure_config
  write_kafka_config  # for its log4j2.properties
  local cp="$KAFKA_LIBS/*"
  # StorageTool takes SCRAM credentials only as arguments: while it formats (a few
  # seconds, once) they show in the process list of this machine.
  if [ ! -f "$SECURE/kafka-data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>"$SECURE_LOGS/kafka-format.log" | tail -n 1)
    java -cp "$cp" -Dlog4j2.configurationFile="$CACHE/log4j2.properties" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$SECURE/server.properties" --standalone \
      --add-scram "SCRAM-SHA-512=[name=admin,password=$ADMIN_PASSWORD]" \
      --add-scram "SCRAM-SHA-512=[name=pipeline,password=$PIPELINE_PASSWORD]" \
      >"$SECURE_LOGS/kafka-format.log" 2>&1 ||
      die "formatting the secured broker's storage failed; see $SECURE_LOGS/kafka-format.log"
  fi
  # Kafka 4 fetches JWKS only from URLs it is told to allow.
  nohup java -Xms256m -Xmx1g -cp "$cp" -Dlog4j2.configurationFile="$CACHE/log4j2.properties" \
    -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="http://$KAFKA_HOST:$TOKEN_PORT/oauth/jwks" \
    kafka.Kafka "$SECURE/server.properties" >"$SECURE_LOGS/kafka.log" 2>&1 &
  echo $! >"$SECURE_RUN/kafka.pid"
}

secure_ready() {
  port_open "$KAFKA_HOST" "$SASL_PORT" && grep -q "Kafka Server started" "$SECURE_LOGS/kafka.log" 2>/dev/null &&
    # The credentials go to curl on its standard input, not on its command line.
    printf 'user = "%s"\n' "$(cat "$SECURE/registry-user.txt")" |
    curl -fsS -m 2 -o /dev/null --cacert "$TLS/ca.pem" -K - \
      "https://$KAFKA_HOST:$REGISTRY_TLS_PORT/apis/ccompat/v7/subjects" 2>/dev/null &&
    curl -fsS -m 2 -o /dev/null "http://$KAFKA_HOST:$TOKEN_PORT/oauth/jwks" 2>/dev/null
}

secure_up() {
  require_java
  mkdir -p "$LOGS" "$RUN"
  fetch_jars
  generate
  mkdir -p "$SECURE_LOGS" "$SECURE_RUN"
  pid_alive "$RUN/registry.pid" || registry_answers || start_registry_local
  start_services  # first: the broker reads the JWKS as it starts
  start_secure_kafka
  say "Starting the secured Kafka on $KAFKA_HOST:$SASL_PORT (SASL_SSL) and $KAFKA_HOST:$MTLS_PORT (mutual TLS) ..."
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until secure_ready; do
    pid_alive "$SECURE_RUN/kafka.pid" || die "the secured Kafka exited during start-up; see $SECURE_LOGS/kafka.log"
    pid_alive "$SECURE_RUN/services.pid" || die "the token endpoint and registry front door exited; see $SECURE_LOGS/services.log"
    [ $SECONDS -lt $deadline ] || die "the secured Kafka and its services did not answer within ${START_TIMEOUT_S}s; see $SECURE_LOGS"
    sleep 0.5
  done
  ensure_scram_users
  say "The secured Kafka answers; certificates and secrets are in $SECURE (secrets.env)."
}

# The SCRAM users given to StorageTool at format time are gone after a restart once
# the metadata log has a snapshot (Kafka 4.1 keeps them only in the bootstrap
# checkpoint), so they are set again at every start, as the broker's own super user
# over mutual TLS. The passwords reach Python in its environment, never its arguments.
ensure_scram_users() {
  # shellcheck source=/dev/null
  source "$SECURE/secrets.env"
  ADMIN_PASSWORD="$ADMIN_PASSWORD" PIPELINE_PASSWORD="$PIPELINE_PASSWORD" "$VENV_PYTHON" - \
    "$KAFKA_HOST:$MTLS_PORT" "$TLS" >>"$SECURE_LOGS/services.log" 2>&1 <<'PY' ||
import os
import sys

from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

address, tls = sys.argv[1], sys.argv[2]
admin = AdminClient({
    "bootstrap.servers": address,
    "security.protocol": "SSL",
    "ssl.ca.location": f"{tls}/ca.pem",
    "ssl.certificate.location": f"{tls}/broker.pem",
    "ssl.key.location": f"{tls}/broker.key",
})
info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
users = {"admin": os.environ["ADMIN_PASSWORD"], "pipeline": os.environ["PIPELINE_PASSWORD"]}
upserts = [UserScramCredentialUpsertion(name, info, password.encode()) for name, password in users.items()]
for future in admin.alter_user_scram_credentials(upserts).values():
    future.result(timeout=30)
PY
    die "setting the secured broker's SCRAM users failed; see $SECURE_LOGS/services.log"
}

secure_down() {
  stop_pid "The secured Kafka" "$SECURE_RUN/kafka.pid"
  stop_pid "The token endpoint and registry front door" "$SECURE_RUN/services.pid"
}

secure_status() {
  if secure_ready; then say "Secured Kafka: answering on $KAFKA_HOST:$SASL_PORT and $KAFKA_HOST:$MTLS_PORT"; return 0; fi
  say "Secured Kafka: not answering (start it with 'scripts/broker.sh secure up')"
  return 1
}

case "${1:-}" in
  up) secure_up ;;
  down) secure_down ;;
  status) secure_status ;;
  *) say "Usage: scripts/broker.sh secure up | down | status"; exit 2 ;;
esac

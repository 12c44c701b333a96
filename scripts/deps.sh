#!/usr/bin/env bash
# Installs what the tests need when it is missing (idempotent, quick when present): the
# Debian packages (curl, pkg-config, OpenSSL headers, the Prometheus server and promtool,
# wrk, chromium), cargo-nextest, rustfmt and clippy, the Kafka-protocol broker the Kafka tests start
# (about 11 minutes to build the first time), and Python's confluent-kafka, the independent
# Kafka client, schemathesis (checks the analytics API against its OpenAPI document), moto (S3 and DynamoDB servers) with boto3, and npm's socket.io-client@4 (into $HOME/.cache/weir-test-node). Needs root for apt-get, or the packages already installed.
set -euo pipefail
need() { command -v "$1" >/dev/null 2>&1; }
apt_missing=()
need curl || apt_missing+=(curl)
need pkg-config || apt_missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || apt_missing+=(libssl-dev)
need promtool || apt_missing+=(prometheus)
need wrk || apt_missing+=(wrk)
# A C compiler: the C plugin example (tests/c_plugin.rs).
need cc || apt_missing+=(gcc)
# headless Chromium: web pages as clients (CORS).
need chromium || apt_missing+=(chromium)
# Node and npm: the real socket.io-client as a Socket.IO client.
need node || apt_missing+=(nodejs)
need npm || apt_missing+=(npm)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "== installing ${apt_missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${apt_missing[@]}"
fi
need cargo-nextest || cargo install cargo-nextest --locked
# The C header of the plugin ABI is checked against a fresh cbindgen run (about 1 minute to build).
cbindgen --version 2>/dev/null | grep -q '0.29.4' || cargo install cbindgen --version 0.29.4 --locked
# The SDK's public API is checked against its last release (about 8 minutes to build the first time).
cargo semver-checks --version 2>/dev/null | grep -q '0.51.0' || cargo install cargo-semver-checks --version 0.51.0 --locked
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
if ! "$HOME/.cargo/bin/tansu" --version 2>/dev/null | grep -q '0.6.0'; then
  echo "== building the test broker (tansu 0.6.0, about 11 minutes the first time)"
  cargo install tansu --version 0.6.0 --features dynostore,libsql --locked
fi
python3 -c 'import confluent_kafka' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check confluent-kafka==2.16.1
# schemathesis checks the analytics API against its OpenAPI document.
schemathesis --version 2>/dev/null | grep -q '4.32.5' || python3 -m pip install -q --disable-pip-version-check schemathesis==4.32.5
# moto serves S3 and DynamoDB on loopback for the object_store and dynamodb tests; boto3 reads back what Weir wrote.
python3 -c 'import moto, boto3, flask' 2>/dev/null && python3 -c 'import moto; assert moto.__version__ == "5.2.5"' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check 'moto[server]==5.2.5' boto3
# socket.io-client@4 (npm) for tests/socketio.rs, in a cache outside the work tree.
node_dir="${WEIR_TEST_NODE_DIR:-$HOME/.cache/weir-test-node}"
[ -f "$node_dir/node_modules/socket.io-client/package.json" ] || npm install --prefix "$node_dir" --no-audit --no-fund --silent socket.io-client@4

#!/bin/sh
# The whole test suite, as CI runs it: formatting, lints, unit tests, the
# network-namespace integration tests against the real kernel, and the Debian
# package (built, its contents and lintian checked, installed into a throwaway
# overlay: packaging/check-deb.sh). Needs root (network namespaces); never
# touches the host's ruleset.
set -eu
cd "$(dirname "$0")/.."
. tests/setup-debian.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
sh packaging/check-deb.sh

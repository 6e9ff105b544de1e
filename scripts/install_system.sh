#!/usr/bin/env bash
# The system parts of the device-emulation tier (`pytest -m devices`), on Debian 12 as root:
# - Mesa >= 24's software Vulkan driver (lavapipe), from bookworm-backports: LiteRT's GPU accelerator (ML Drift over
#   WebGPU/Dawn) needs it; bookworm's own Mesa 22 is refused by Dawn;
# - Chromium, for ONNX Runtime Web and LiteRT.js (driven by playwright-core, from mnv4/web's npm lock file);
# - qemu-user-static and debootstrap, for the ARM emulation (`mnv4 emulate arm64`);
# - onnxruntime 1.17 in a venv of its own (/opt/mnv4-onnxruntime-1.17), the oldest release ONNX exports are tested in.
# Idempotent: what is installed already is left as it is. Then `npm ci` vendors the web page's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "scripts/install_system.sh: run as root (apt-get)" >&2; exit 2; fi
if [ ! -f /etc/apt/sources.list.d/bookworm-backports.sources ]; then
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi
export DEBIAN_FRONTEND=noninteractive
need=()
for package in chromium qemu-user-static debootstrap binfmt-support; do
    dpkg -s "$package" >/dev/null 2>&1 || need+=("$package")
done
mesa="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
old_mesa=false
if dpkg --compare-versions "${mesa:-0}" lt 24; then old_mesa=true; fi
if [ ${#need[@]} -gt 0 ] || $old_mesa; then
    apt-get update -qq
    if [ ${#need[@]} -gt 0 ]; then
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if $old_mesa; then
        apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers >/dev/null
    fi
fi
(cd mnv4/web && npm ci --silent --no-audit --no-fund)
# The oldest onnxruntime the README says ONNX exports load in (Android apps pin old ONNX Runtime Mobile releases), in a
# venv of its own beside the project's.
ORT_OLDEST=/opt/mnv4-onnxruntime-1.17
if [ ! -x "$ORT_OLDEST/bin/python" ] || ! "$ORT_OLDEST/bin/python" -c "import onnxruntime" 2>/dev/null; then
    python3 -m venv "$ORT_OLDEST"
    "$ORT_OLDEST/bin/pip" install --quiet "onnxruntime==1.17.3" "numpy<2"
fi
echo "system parts: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)," \
     "$(chromium --version 2>/dev/null | head -1), qemu-aarch64-static $(qemu-aarch64-static --version | head -1 | awk '{print $NF}')"

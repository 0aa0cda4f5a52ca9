#!/usr/bin/env bash
# Install trtstream as a systemd service from this checkout:
#   - the system user and group "trtstream" (and the video/render groups the unit names, if missing)
#   - a virtual environment under /opt/trtstream with trtstream and the extras this box can use
#   - /etc/trtstream/config.toml from systemd/config.example.toml, only when absent: an existing config
#     is never overwritten (a differing example is written next to it as config.toml.dist)
#   - trtstream.service and trtstream@.service in /etc/systemd/system (+ the Jetson drop-in on Jetson)
#   - on NVIDIA x86 boxes: nvidia-uvm loaded at boot (the unit's device policy needs it registered)
#   - systemctl daemon-reload
# It neither enables nor starts the service. Safe to run again: unchanged files are left alone.
#
# Usage: sudo scripts/install-service.sh [--dry-run] [--prefix DIR] [--config FILE] [--extras LIST]
#                                        [--python PYTHON] [--root DIR] [--no-venv]
#   --dry-run      print what would be done, change nothing (no root needed)
#   --prefix DIR   virtual environment (default /opt/trtstream); the units' paths follow it
#   --config FILE  config to install when none exists (default systemd/config.example.toml)
#   --extras LIST  pip extras (default: gpu-cu12 or gpu-cu13, the driver's CUDA major, when an NVIDIA driver is present, systemd when libsystemd's
#                  headers are, since systemd-python is built from source)
#   --root DIR     install into DIR instead of / (staging, tests): no user, modules or systemctl; a venv
#                  made there is not relocatable, so build images by running this inside the image
#   --no-venv      skip the virtual environment (units and config only)
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/trtstream
config_src=$src/systemd/config.example.toml
extras=auto
python=${PYTHON:-python3}
root=
dry_run=0
with_venv=1
user=trtstream

die() { echo "install-service: error: $*" >&2; exit 1; }
say() { echo "install-service: $*"; }

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry_run=1 ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift ;;
        --config) [ $# -ge 2 ] || die "--config needs a file"; config_src=$2; shift ;;
        --extras) [ $# -ge 2 ] || die "--extras needs a list"; extras=$2; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python=$2; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=${2%/}; shift ;;
        --no-venv) with_venv=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

case $prefix in /*) ;; *) die "--prefix must be an absolute path" ;; esac
[ -f "$config_src" ] || die "config $config_src not found"
if [ "$dry_run" = 0 ] && [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0), or with --dry-run to see what it would do"
fi

# Every change goes through run: printed under --dry-run, executed otherwise.
run() {
    if [ "$dry_run" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

etc=$root/etc/trtstream
unit_dir=$root/etc/systemd/system
jetson=0; [ -e /etc/nv_tegra_release ] && jetson=1
nvidia=0; [ -e /proc/driver/nvidia/version ] && nvidia=1

# -- user and groups -------------------------------------------------------------------------------
if [ -z "$root" ]; then
    for group in video render; do
        getent group "$group" >/dev/null || run groupadd --system "$group"
    done
    if ! getent passwd "$user" >/dev/null; then
        if command -v adduser >/dev/null && adduser --help 2>&1 | grep -q -- --system; then
            run adduser --system --group --home /var/lib/trtstream --no-create-home \
                --shell /usr/sbin/nologin --gecos "trtstream daemon" "$user"
        else
            getent group "$user" >/dev/null || run groupadd --system "$user"
            run useradd --system --gid "$user" --home-dir /var/lib/trtstream --no-create-home \
                --shell /usr/sbin/nologin --comment "trtstream daemon" "$user"
        fi
    else
        say "user $user exists"
    fi
    owner=(-o root -g "$user")
else
    owner=()  # an image root: ownership is settled where it is deployed
fi

# -- virtual environment ---------------------------------------------------------------------------
if [ "$with_venv" = 1 ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
        || die "trtstream needs Python >= 3.10 (use --python /path/to/python3.x)"
    if [ "$extras" = auto ]; then
        extras=
        if [ "$nvidia" = 1 ] || [ "$jetson" = 1 ]; then
            # cuda-bindings must not be newer than the driver's CUDA major (13 needs a CUDA 13 driver):
            # ask libcuda itself, as daemon/cuda.py does at start.
            cuda_major=$("$python" -c 'import ctypes
try:
    lib = ctypes.CDLL("libcuda.so.1")
except OSError:
    raise SystemExit
v = ctypes.c_int(0)
if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
    print(v.value // 1000)' 2>/dev/null || true)
            case $cuda_major in
                12|13) extras=gpu-cu$cuda_major; say "driver supports CUDA $cuda_major: extras gpu-cu$cuda_major" ;;
                *) say "cannot read the driver's CUDA version: installing without the GPU extras (--extras gpu-cu12 or gpu-cu13)" ;;
            esac
        fi
        if command -v pkg-config >/dev/null && pkg-config --exists libsystemd; then
            extras=${extras:+$extras,}systemd
        else
            say "libsystemd headers not found: installing without systemd-python (sd_notify still works;"
            say "  for structured journald fields: apt-get install libsystemd-dev pkg-config, then rerun)"
        fi
    fi
    venv=$root$prefix
    [ -x "$venv/bin/python" ] || run "$python" -m venv "$venv"
    run "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade "$src${extras:+[$extras]}"
    run install -m 0644 "$src/README.md" "$venv/README.md"
fi

# -- files -----------------------------------------------------------------------------------------
# install_if_changed SRC DEST MODE [install options]: copy unless DEST already has the same content.
install_if_changed() {
    local source=$1 dest=$2 mode=$3
    shift 3
    if [ -f "$dest" ] && cmp -s "$source" "$dest"; then
        say "$dest unchanged"
        return
    fi
    run install -D -m "$mode" "$@" "$source" "$dest"
}

run install -d -m 0755 "$etc" "$unit_dir"

config=$etc/config.toml
if [ ! -e "$config" ]; then
    run install -m 0640 "${owner[@]}" "$config_src" "$config"
elif cmp -s "$config_src" "$config"; then
    say "$config unchanged"
else
    say "$config exists and differs from $config_src: keeping it; the new one goes to $config.dist"
    install_if_changed "$config_src" "$config.dist" 0640 "${owner[@]}"
fi

for unit in trtstream.service trtstream@.service; do
    sed "s#/opt/trtstream#$prefix#g" "$src/systemd/$unit" > "$tmp/$unit"
    install_if_changed "$tmp/$unit" "$unit_dir/$unit" 0644
    if [ "$jetson" = 1 ]; then
        install_if_changed "$src/systemd/jetson.conf" "$unit_dir/$unit.d/jetson.conf" 0644
    fi
done

# -- NVIDIA driver modules (x86) -------------------------------------------------------------------
if [ -z "$root" ] && [ "$nvidia" = 1 ] && [ "$jetson" = 0 ]; then
    printf 'nvidia-uvm\n' > "$tmp/trtstream-nvidia.conf"
    install_if_changed "$tmp/trtstream-nvidia.conf" /etc/modules-load.d/trtstream-nvidia.conf 0644
    # Load it and create /dev/nvidia-uvm* now; the sandboxed service cannot (no module loading, no setuid).
    run modprobe nvidia-uvm
    if command -v nvidia-modprobe >/dev/null; then run nvidia-modprobe -u -c=0; fi
fi

# -- systemd ---------------------------------------------------------------------------------------
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
else
    say "systemd is not running here: skipping daemon-reload"
fi

cat <<EOF
install-service: done. Next:
  1. edit $config (model path, sources); check it: sudo -u $user $prefix/bin/trtstream check-config $config
  2. systemctl enable --now trtstream            (or per GPU/config: trtstream@NAME with $etc/NAME.toml)
  3. journalctl -u trtstream -f;  $prefix/bin/trtstream status
EOF

#!/usr/bin/env bash
# Install fednode from this archive, on a server with no package index (no network needed).
#
#   ./install.sh [PREFIX]          PREFIX defaults to /opt/fednode
#   PYTHON=/usr/bin/python3.11 ./install.sh /opt/fednode
#
# Creates PREFIX/venv from the wheels in wheelhouse/ only (pip --no-index --require-hashes: nothing is
# downloaded, nothing is compiled), links PREFIX/bin/fednode, copies the docs to PREFIX/share/doc/fednode
# and the systemd unit to PREFIX/share/fednode/fednode.service, then prints the next steps.
# Run again with a newer archive to upgrade in place (stop the service first).
# Exit status: 0 installed, 1 the archive is damaged or the install failed, 2 wrong Python or platform
# for this archive, or bad usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
default_prefix=/opt/fednode

die() { # status, message, fix
    printf 'error: %s\nfix: %s\n' "$2" "$3" >&2
    exit "$1"
}

usage() {
    printf 'usage: %s [PREFIX]   (default %s)\n' "$0" "$default_prefix"
    printf 'the Python: the environment variable PYTHON, else python%s or python3 on PATH\n' "${python:-3}"
}

# ---- what this archive is for (written by deploy/dist/build.py) ----
[ -r "$here/bundle.txt" ] || die 1 "$here/bundle.txt is missing" "unpack the whole archive again"
version="" python="" python_tag="" platform="" arch="" glibc_min="" pip_wheel="" extras=""
while IFS='=' read -r key value; do
    case "$key" in
        version) version=$value ;;
        python) python=$value ;;
        python_tag) python_tag=$value ;;
        platform) platform=$value ;;
        arch) arch=$value ;;
        glibc_min) glibc_min=$value ;;
        pip_wheel) pip_wheel=$value ;;
        extras) extras=$value ;;
    esac
done <"$here/bundle.txt"
[ -n "$version" ] && [ -n "$python_tag" ] && [ -n "$pip_wheel" ] ||
    die 1 "$here/bundle.txt is incomplete" "unpack the whole archive again"

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die 2 "unknown option $1" "./install.sh [PREFIX]" ;;
esac
[ $# -le 1 ] || { usage >&2; die 2 "too many arguments" "./install.sh [PREFIX]"; }
prefix=${1:-$default_prefix}
case "$prefix" in
    /*) ;;
    *) prefix="$PWD/$prefix" ;;
esac
prefix=${prefix%/}
venv="$prefix/venv"

# ---- the archive is whole ----
if command -v sha256sum >/dev/null 2>&1; then
    (cd "$here" && sha256sum --check --quiet --strict SHA256SUMS) ||
        die 1 "the archive's files do not match SHA256SUMS (damaged copy)" \
            "copy the archive again and compare its sha256 with the one you were given"
else
    echo "warning: sha256sum not found; the archive's checksums were not checked" >&2
fi

# ---- a Python this archive's wheels are built for ----
tag_of() { # prints e.g. "cp311" for a CPython 3.11, nothing when it is not a working Python
    "$1" -c 'import sys; print("cp%d%d" % sys.version_info[:2] if sys.implementation.name == "cpython" else sys.implementation.name)' 2>/dev/null || true
}
if [ -n "${PYTHON:-}" ]; then
    py=$PYTHON
    found=$(tag_of "$py")
    [ "$found" = "$python_tag" ] ||
        die 2 "this archive is for CPython $python ($python_tag); PYTHON=$py is ${found:-not a working Python}" \
            "set PYTHON to a CPython $python (e.g. PYTHON=/usr/bin/python$python), or use the archive built for ${found:-your Python} (make dist DIST_PYTHONS=...)"
else
    py="" seen=""
    for candidate in "python$python" python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        found=$(tag_of "$candidate")
        seen="$seen $candidate=${found:-broken}"
        if [ "$found" = "$python_tag" ]; then
            py=$(command -v "$candidate")
            break
        fi
    done
    [ -n "$py" ] ||
        die 2 "this archive is for CPython $python ($python_tag); found:${seen:- no python$python, no python3 on PATH}" \
            "install Python $python from the OS packages, or set PYTHON=/path/to/python$python, or use the archive built for your Python"
fi

machine=$(uname -m)
[ "$machine" = "$arch" ] ||
    die 2 "this archive is for $platform; this machine is $machine" "use the archive built for manylinux_2_28_$machine"
glibc=$("$py" -c 'import platform; print(platform.libc_ver()[1])')
"$py" -c 'import sys; have, need = (tuple(map(int, v.split("."))) for v in sys.argv[1:]); sys.exit(have < need)' \
    "${glibc:-0}" "$glibc_min" ||
    die 2 "this archive needs glibc >= $glibc_min (it is for $platform); this system has glibc ${glibc:-unknown}" \
        "install on a newer OS release, or build an archive for an older platform tag (make dist DIST_PLATFORMS=...)"

# ---- the venv, from the wheelhouse only ----
wheelhouse="$here/wheelhouse"
# the host's pip configuration (an index, a mirror, find-links, constraints) must not change what is
# installed: pip reads no config file, and every source but this wheelhouse is off
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIREMENT PIP_TARGET PIP_PREFIX PIP_ROOT PIP_USER PIP_EDITABLE

if [ -e "$venv" ]; then
    found=$(tag_of "$venv/bin/python")
    [ "$found" = "$python_tag" ] ||
        die 2 "$venv exists and is not a CPython $python venv (${found:-no working python in it})" \
            "remove $venv (after stopping the service), then run ./install.sh again"
    echo "upgrading $venv in place"
else
    echo "creating $venv with $py"
    mkdir -p "$prefix"
    # --without-pip: no ensurepip needed (Debian ships it apart); pip comes from the wheelhouse below
    "$py" -m venv --without-pip "$venv"
fi
"$venv/bin/python" "$wheelhouse/$pip_wheel/pip" install --quiet --no-index --find-links "$wheelhouse" \
    --only-binary=:all: --no-cache-dir --force-reinstall "$wheelhouse/$pip_wheel"
"$venv/bin/python" -m pip install --quiet --no-index --find-links "$wheelhouse" --only-binary=:all: \
    --no-cache-dir --require-hashes --force-reinstall --no-warn-script-location -r "$here/requirements.txt"

got=$("$venv/bin/fednode" --version) ||
    die 1 "$venv/bin/fednode --version failed after the install" "read the message above"
[ "$got" = "fednode $version" ] ||
    die 1 "$venv/bin/fednode --version says '$got', expected 'fednode $version'" "read the message above"

mkdir -p "$prefix/bin" "$prefix/share/fednode" "$prefix/share/doc"
ln -sfn ../venv/bin/fednode "$prefix/bin/fednode"
rm -rf "$prefix/share/doc/fednode"
cp -R "$here/doc" "$prefix/share/doc/fednode"
unit="$prefix/share/fednode/fednode.service"
if [ "$prefix" = "$default_prefix" ]; then
    cp "$here/systemd/fednode.service" "$unit"
else
    escaped=$(printf '%s' "$prefix" | sed 's/[#&\\]/\\&/g')
    sed "s#$default_prefix/#$escaped/#g" "$here/systemd/fednode.service" >"$unit"
fi
chmod 0644 "$unit"

cat <<EOF
installed $got${extras:+ (with [$extras])} for $python_tag $platform in $venv, from this archive only
  program: $prefix/bin/fednode
  unit:    $unit
  docs:    $prefix/share/doc/fednode/deploy/README.md

Next steps, as root (deploy/README.md, "Installing a node" steps 2 and 3, then Runbook 1):
  ln -sfn $prefix/bin/fednode /usr/local/bin/fednode
  useradd --system --home-dir /var/lib/fednode --shell /usr/sbin/nologin fednode
  install -d -o fednode -g fednode -m 0700 /var/lib/fednode
  install -m 0644 $unit /etc/systemd/system/fednode.service
  systemctl daemon-reload
  systemctl enable fednode
Do not start the service before the node is enrolled (Runbook 1).
EOF

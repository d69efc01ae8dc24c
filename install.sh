#!/bin/sh
# Install nsrun from this checkout, as root (docs/install.md says more).
#
#   sh install.sh          Debian 12, Ubuntu and other apt systems: build the Debian package
#                          dist/nsrun_VERSION_ARCH.deb from this checkout (debian/: dh-virtualenv,
#                          in a scratch copy) and install it with apt: /usr/bin/nsrun, its
#                          environment /opt/venvs/nsrun, the systemd units with nsrun.socket
#                          enabled and started where systemd runs, the CNI plugin
#                          /usr/lib/cni/nsrun, the man page, completion, the profiles in
#                          /etc/nsrun/profiles. Run again, it installs the
#                          package built anew over the old one (an upgrade: edited profiles
#                          are kept). `apt-get remove nsrun` (or `purge`) takes it away.
#   sh install.sh --venv   no package: a virtual environment /opt/nsrun (NSRUN_VENV overrides),
#                          /usr/local/bin/nsrun (the native front, native/nsrun.c, and its
#                          Python launcher $venv/bin/nsrun-python), the CNI plugin `nsrun` in
#                          /usr/lib/cni (Debian) and /opt/cni/bin, the man page and completion
#                          under /usr/local/share; no units, no group, no service
#                          (docs/service.md says how to add them). For systems without apt, too (then python3
#                          with venv, a C compiler and Python's headers must be there).
#   sh install.sh --test   the tests' environment: the Debian packages the tests use,
#                          /opt/nsrun with nsrun's dependencies and the test extras (pytest,
#                          hypothesis, mypy), and (with apt) the package built into dist/, not
#                          installed: nothing on PATH, no service. Then
#                          `/opt/nsrun/bin/python -m pytest -q` runs the tests, which run this
#                          checkout's code and read the built package. .ci/run uses it.
set -eu
cd "$(dirname "$0")"
venv=${NSRUN_VENV:-/opt/nsrun}
mode=${1:-deb}
case "$mode" in
    deb|--venv|--test) ;;
    *) echo "usage: $0 [--venv|--test]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (sudo sh install.sh)" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
have_apt() { command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; }

apt_install() {  # the Debian packages among $* that are not installed yet
    missing=
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
            missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "install.sh: installing Debian packages:$missing"
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
}

# ---- the Debian package ----------------------------------------------------------------
build_deb() {  # build dist/nsrun_VERSION_ARCH.deb from this checkout; $deb is its path
    if ! have_apt || [ ! -f debian/control ]; then
        echo "install.sh: no apt here: use \`sh install.sh --venv\` (docs/install.md)" >&2
        exit 2
    fi
    # dpkg-dev, debhelper, dh-virtualenv, Python's headers and venv module, a C compiler
    # (python-iptables builds a small C extension): what debian/control says the build needs
    apt_install dpkg-dev build-essential
    if ! dpkg-checkbuilddeps >/dev/null 2>&1; then
        echo "install.sh: installing the package's build dependencies (debian/control)"
        apt-get update -qq
        apt-get build-dep -y -qq ./ >/dev/null
    fi
    version=$(dpkg-parsechangelog -S Version)
    arch=$(dpkg --print-architecture)
    deb=dist/nsrun_${version}_${arch}.deb
    # Built in a scratch copy of the checkout as it is (uncommitted changes included), so the
    # build leaves nothing in it but the package.
    scratch=$(mktemp -d /tmp/nsrun-build.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    mkdir "$scratch/nsrun"
    tar -cf - --exclude=./.git --exclude=./dist --exclude=./.venv --exclude=__pycache__ \
        --exclude=./.pytest_cache --exclude=./.mypy_cache --exclude=./.hypothesis . |
        tar -xf - -C "$scratch/nsrun"
    echo "install.sh: building $deb (dpkg-buildpackage; its log: $scratch/build.log while it runs)"
    start=$(date +%s)
    if ! (cd "$scratch/nsrun" && dpkg-buildpackage -b -us -uc) >"$scratch/build.log" 2>&1; then
        tail -n 40 "$scratch/build.log" >&2
        echo "install.sh: the package build failed (the last lines of its log are above)" >&2
        exit 1
    fi
    mkdir -p dist
    rm -f dist/nsrun_*.deb
    mv "$scratch/nsrun_${version}_${arch}.deb" "$deb"
    rm -rf "$scratch"
    trap - EXIT
    echo "install.sh: built $deb in $(( $(date +%s) - start )) s"
}

if [ "$mode" = deb ]; then
    build_deb
    # A launcher of install.sh --venv's in /usr/local/bin would come first on PATH (and its
    # CNI plugin in /opt/cni/bin would be an older nsrun's).
    if grep -q '^# nsrun launcher' /usr/local/bin/nsrun 2>/dev/null ||
            grep -aq 'nsrun native front' /usr/local/bin/nsrun 2>/dev/null; then
        echo "install.sh: removing install.sh --venv's /usr/local files ($venv stays)"
        rm -f /usr/local/bin/nsrun /usr/local/share/man/man1/nsrun.1 \
            /usr/local/share/bash-completion/completions/nsrun \
            /usr/local/share/zsh/site-functions/_nsrun \
            /usr/local/share/fish/vendor_completions.d/nsrun.fish
        if grep -q '^# nsrun launcher' /opt/cni/bin/nsrun 2>/dev/null; then
            rm -f /opt/cni/bin/nsrun
        fi
    fi
    # --reinstall: a package built again from a changed checkout carries the same version.
    # Edited conffiles (/etc/nsrun/profiles) are kept: dpkg's conffile question gets its
    # default answer (keep), and the new file is put beside as NAME.dpkg-dist.
    apt-get install -y -qq --no-install-recommends --reinstall --allow-downgrades \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "./$deb" >/dev/null
    echo "install.sh: nsrun $(dpkg-query -W -f='${Version}' nsrun) is installed (/usr/bin/nsrun; dpkg -L nsrun lists its files)"
    if [ -d /run/systemd/system ] && systemctl is-active --quiet nsrun.socket; then
        echo "install.sh: nsrun.socket is active: root's nsrun goes through the warm service"
    fi
    exit 0
fi

# ---- a virtual environment: --venv (installed) and --test (the tests') -------------------
if have_apt; then
    packages="python3 python3-venv python3-dev gcc libc6-dev iproute2 iptables nftables util-linux procps"
    # shellcheck disable=SC2086
    apt_install $packages
fi
# The python3 on PATH (Debian's /usr/bin/python3 on a fresh machine).
if [ ! -x "$venv/bin/python" ]; then
    echo "install.sh: creating the virtual environment $venv"
    python3 -m venv "$venv"
fi
# wheel first: python-iptables ships a setup.py only, which pip builds as a wheel when it can
# (otherwise through the deprecated `setup.py install`, with a warning)
"$venv/bin/python" -m pip install -q --disable-pip-version-check wheel
if [ "$mode" = --test ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check ".[test]"
    # the package too, built and not installed: tests/unit/test_packaging.py reads it
    if have_apt; then
        build_deb
    fi
    echo "install.sh: the tests' environment is $venv: $venv/bin/python -m pytest -q"
    exit 0
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check .
# $venv/bin/nsrun-python: a launcher of nsrun's own rather than pip's console script, which
# imports `re` (~7 ms of a ~20 ms run through the service); it runs Python with -I -S
# (nsrun/cli/launcher.py says why). Written beside and renamed over: never written through.
# -I: nsrun.cli.launcher is the installed one, not this checkout's (no current directory on sys.path)
"$venv/bin/python" -I -m nsrun.cli.launcher "$venv/bin/nsrun-python"
# /usr/local/bin/nsrun: the native front (native/nsrun.c), which does the runs through the warm
# service without starting Python and hands everything else to that launcher. Built under a
# fresh name beside it and renamed over, as the launcher is.
mkdir -p /usr/local/bin
front=$(mktemp /usr/local/bin/.nsrun.XXXXXX)
if ! ${CC:-cc} -O2 -Wall -Wextra "-DNSRUN_PYTHON=\"$venv/bin/nsrun-python\"" -o "$front" native/nsrun.c; then
    rm -f "$front"
    echo "install.sh: building the native front (native/nsrun.c) failed: a C compiler is needed" >&2
    exit 1
fi
chmod 755 "$front"
mv -f "$front" /usr/local/bin/nsrun
# The CNI plugin (docs/cni.md), type "nsrun": the same kind of launcher, named `nsrun` in the
# CNI plugin directories, where runtimes look a network's type up: Debian's /usr/lib/cni
# (containernetworking-plugins' too), and /opt/cni/bin, the upstream default, where it exists
# or where this is not Debian.
cni_dirs=
[ -f /etc/debian_version ] && cni_dirs=/usr/lib/cni
{ [ -d /opt/cni/bin ] || [ ! -f /etc/debian_version ]; } && cni_dirs="$cni_dirs /opt/cni/bin"
for dir in $cni_dirs; do
    if [ "$dir" = /usr/lib/cni ] && dpkg-query -S /usr/lib/cni/nsrun >/dev/null 2>&1; then
        continue  # the Debian package's: not written over
    fi
    mkdir -p "$dir"
    "$venv/bin/python" -I -m nsrun.cli.launcher --cni "$dir/nsrun"
done

install -D -m 0644 docs/nsrun.1 /usr/local/share/man/man1/nsrun.1
install -D -m 0644 completions/nsrun.bash /usr/local/share/bash-completion/completions/nsrun
install -D -m 0644 completions/_nsrun /usr/local/share/zsh/site-functions/_nsrun
install -D -m 0644 completions/nsrun.fish /usr/local/share/fish/vendor_completions.d/nsrun.fish
if [ -x /usr/bin/nsrun ]; then
    echo "install.sh: note: /usr/local/bin/nsrun now comes before the package's /usr/bin/nsrun on PATH" >&2
fi
echo "install.sh: nsrun $("$venv/bin/python" -c 'import nsrun; print(nsrun.__version__)') is /usr/local/bin/nsrun (in $venv)"

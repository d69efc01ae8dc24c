#!/bin/sh
# Install nsrun from this checkout, as root, on Debian 12 (or a Debian-like system):
#   - the Debian packages a fresh machine lacks: Python with its venv module and headers,
#     a C compiler (python-iptables builds a small C extension), iproute2, iptables,
#     nftables, util-linux (nsenter, setpriv, unshare);
#   - a virtual environment, /opt/nsrun (NSRUN_VENV overrides): Debian's python3 refuses
#     `pip install` outside one (PEP 668);
#   - nsrun on PATH (a small launcher, /usr/local/bin/nsrun), its man page, and completion
#     for bash, zsh and fish under /usr/local/share;
#   - its CNI plugin, `nsrun` in /usr/lib/cni (Debian) and /opt/cni/bin.
# `./install.sh --test` also installs the test extras (pytest, hypothesis, mypy) into the
# virtual environment; then `/opt/nsrun/bin/python -m pytest -q` runs the tests.
# Running it again updates the installation from the checkout. .ci/run uses it too.
set -eu
cd "$(dirname "$0")"
venv=${NSRUN_VENV:-/opt/nsrun}
extras=
case "${1:-}" in
    --test) extras='[test]' ;;
    '') ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (sudo ./install.sh)" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
packages="python3 python3-venv python3-dev gcc libc6-dev iproute2 iptables nftables util-linux procps"
missing=
for pkg in $packages; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
        missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "install.sh: installing Debian packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The python3 on PATH (Debian's /usr/bin/python3 on a fresh machine).
if [ ! -x "$venv/bin/python" ]; then
    echo "install.sh: creating the virtual environment $venv"
    python3 -m venv "$venv"
fi
# wheel first: python-iptables ships a setup.py only, which pip builds as a wheel when it can
# (otherwise through the deprecated `setup.py install`, with a warning)
"$venv/bin/python" -m pip install -q --disable-pip-version-check wheel
"$venv/bin/python" -m pip install -q --disable-pip-version-check ".$extras"
# /usr/local/bin/nsrun: a launcher of nsrun's own rather than pip's console script, which
# imports `re` (~7 ms of a ~20 ms run through the service); it runs Python with -I -S
# (nsrun/cli/launcher.py says why). Written beside and renamed over: never written through.
# -I: nsrun.cli.launcher is the installed one, not this checkout's (no current directory on sys.path)
"$venv/bin/python" -I -m nsrun.cli.launcher /usr/local/bin/nsrun
# The CNI plugin (docs/cni.md), type "nsrun": the same kind of launcher, named `nsrun` in the
# CNI plugin directories, where runtimes look a network's type up: Debian's /usr/lib/cni
# (containernetworking-plugins' too), and /opt/cni/bin, the upstream default, where it exists
# or where this is not Debian.
cni_dirs=
[ -f /etc/debian_version ] && cni_dirs=/usr/lib/cni
{ [ -d /opt/cni/bin ] || [ ! -f /etc/debian_version ]; } && cni_dirs="$cni_dirs /opt/cni/bin"
for dir in $cni_dirs; do
    mkdir -p "$dir"
    "$venv/bin/python" -I -m nsrun.cli.launcher --cni "$dir/nsrun"
done

install -D -m 0644 docs/nsrun.1 /usr/local/share/man/man1/nsrun.1
install -D -m 0644 completions/nsrun.bash /usr/local/share/bash-completion/completions/nsrun
install -D -m 0644 completions/_nsrun /usr/local/share/zsh/site-functions/_nsrun
install -D -m 0644 completions/nsrun.fish /usr/local/share/fish/vendor_completions.d/nsrun.fish
echo "install.sh: nsrun $("$venv/bin/python" -c 'import nsrun; print(nsrun.__version__)') is /usr/local/bin/nsrun (in $venv)"

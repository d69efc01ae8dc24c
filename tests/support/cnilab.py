"""The CNI side of the lab (tests/lab/test_cni.py, bench/cni_bench.py): nsrun's plugin beside
the reference plugins, network configurations, container namespaces, and the outside judge,
a libcni client (tests/support/cniclient.go) built at test time into a temporary directory.

Everything runs inside the lab host (`nsenter --net`): the plugin is nsrun's CNI launcher
(nsrun.cli.launcher --cni, what install.sh installs, for this checkout) named `nsrun` in a
plugin directory of the test's own, ahead of Debian's /usr/lib/cni on CNI_PATH; libcni's
cache of Results and the `tuning` plugin's backups go to temporary directories too, never to
the machine's /var/lib/cni or /run/cni. A "container" is a bare network namespace made for it
(/run/netns is the test session's own: tests/conftest.py), as a runtime makes one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from support.mounts import chrooted

SUPPORT = Path(__file__).resolve().parent
REPO = SUPPORT.parent.parent
REFERENCE = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
GOCODE = Path("/usr/share/gocode")  # Debian's golang-github-appc-cni-dev
# What the tests need (tests/support/requirements.py knows each, and .ci/run installs them).
CLIENT_NEEDS = ("go", "libcni's source", "/usr/lib/cni/bridge")
PODMAN_NEEDS = ("podman", "runc", "conmon", "a static busybox", "/usr/lib/cni/bridge")
def build_client(dest: Path) -> Path:
    """The libcni client, built from cniclient.go into DEST (Go's build cache in DEST too)."""
    dest.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{dest / 'gopath'}:{GOCODE}", GOCACHE=str(dest / "cache"),
               GOFLAGS="", CGO_ENABLED="0", HOME=str(dest))
    out = dest / "cniclient"
    r = subprocess.run(["go", "build", "-o", str(out), "cniclient.go"], cwd=SUPPORT, env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"building the libcni client failed: {r.stderr}")
    shutil.rmtree(dest / "cache", ignore_errors=True)
    return out


def write_plugin(directory: Path, python: str = sys.executable) -> Path:
    """nsrun's CNI plugin, this checkout's, as `nsrun` in DIRECTORY (install.sh's launcher)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nsrun"
    subprocess.run([python, "-m", "nsrun.cli.launcher", "--cni", str(path), python], check=True, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, timeout=60)
    return path


class Cni:
    """A test's CNI world in lab runner LAB: the plugin directory, configuration directory,
    cache, the client, and the container namespaces it made (all removed by close())."""

    def __init__(self, lab: Any, client: Path | None, tmp: Path | None = None) -> None:
        self.lab = lab
        self.client = client
        self.tmp = Path(tempfile.mkdtemp(prefix="nsrun-cni-", dir=tmp))
        self.plugins = self.tmp / "plugins"
        write_plugin(self.plugins)
        self.confdir = self.tmp / "net.d"
        self.confdir.mkdir()
        self.cache = self.tmp / "cache"
        self.cache.mkdir()
        self.data = self.tmp / "tuning"  # the tuning plugin's backups (its dataDir)
        self.containers: list[str] = []
        self.env = dict(lab.env, CNI_PATH=f"{self.plugins}:{REFERENCE}", CNI_CACHE_DIR=str(self.cache))

    # -- configurations ----------------------------------------------------------------------

    def network(self, name: str, *plugins: dict[str, Any], version: str = "1.0.0") -> Path:
        """Write the network list NAME of PLUGINS."""
        path = self.confdir / f"{name}.conflist"
        path.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": list(plugins)}, indent=1))
        return path

    def tuning(self, **conf: Any) -> dict[str, Any]:
        return {"type": "tuning", "dataDir": str(self.data), **conf}

    # -- containers -------------------------------------------------------------------------

    def container(self, suffix: str) -> str:
        """A fresh network namespace for a container: /run/netns/LABID-SUFFIX (its path)."""
        from nsrun.linux import netns

        name = f"{self.lab.lab.id}-{suffix}"
        netns.create(name, lambda: None)
        self.containers.append(name)
        return netns.path(name)

    def remove_container(self, nspath: str) -> None:
        from nsrun.linux import netns

        name = os.path.basename(nspath)
        netns.delete(name)
        if name in self.containers:
            self.containers.remove(name)

    def inside(self, nspath: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={nspath}", *argv], capture_output=True, text=True,
                              check=check, timeout=60)

    def links(self, nspath: str) -> list[dict[str, Any]]:
        return json.loads(self.inside(nspath, "ip", "-j", "link", "show").stdout)  # type: ignore[no-any-return]

    # -- the libcni client and the plugin, inside the lab host ----------------------------------

    def client_run(self, verb: str, network: str, container: str, nspath: str, ifname: str = "eth0",
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = self.lab.host_argv([str(self.client), verb, str(self.confdir), network, container, nspath, ifname])
        return subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=120)

    def plugin(self, command: str, conf: dict[str, Any] | str | bytes, env: dict[str, str] | None = None,
               plugin: Path | None = None) -> tuple[int, Any, str]:
        """Run a plugin (nsrun's by default) with CNI_COMMAND and CONF on stdin, as a runtime
        does: (exit status, stdout as JSON or None when empty, stderr)."""
        data = conf if isinstance(conf, bytes) else (conf if isinstance(conf, str) else json.dumps(conf)).encode()
        run_env = {k: v for k, v in self.env.items() if not k.startswith("CNI_") or k == "CNI_PATH"}
        run_env.update(CNI_COMMAND=command, **(env or {}))
        r = subprocess.run(self.lab.host_argv([str(plugin or self.plugins / "nsrun")]), input=data, env=run_env,
                           capture_output=True, timeout=120)
        out = r.stdout.decode()
        return r.returncode, json.loads(out) if out.strip() else None, r.stderr.decode()

    def close(self) -> None:
        from nsrun.linux import netns

        for name in list(self.containers):
            netns.delete(name)
        self.containers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- podman 4.3, its CNI backend, no registry -------------------------------------------------

class Podman:
    """podman run inside the lab host, every piece of its state under TMP: storage (vfs),
    run root, libpod's tmpdir and file locks (no /dev/shm lock), volumes, events log,
    containers.conf (CNI backend, network configuration and plugin directories), HOME; a
    rootfs of a static busybox (no image, no registry), the containers' output in k8s-file
    logs there too (never the machine's journal). libcni's cache, /var/lib/cni, is the
    caller's to make private (podman's CNI backend has no setting for it).

    What runs in a container runs as the container's own process (`podman run`), never
    through `podman exec`: runc exec enters the container's mount namespace with setns(2),
    which puts the process at that namespace's root, and in a chroot (a fresh Debian 12 of
    /var/tmp/deb12/run-readme.sh, chroot builders) that is the machine's root file system,
    not the container's: its /bin/sh (dash), without nc, a root shell on the machine's
    files (support.mounts.chrooted). __call__ refuses `exec` there."""

    def __init__(self, cni: Cni) -> None:
        self.cni = cni
        self.base = Path(tempfile.mkdtemp(prefix="nsrp-", dir="/tmp"))  # podman: a run root of <= 50 characters
        for d in ("root", "runroot", "tmp", "volumes", "home", "rootfs/bin", "rootfs/proc", "rootfs/sys",
                  "rootfs/dev", "rootfs/etc", "rootfs/tmp"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2("/bin/busybox", self.base / "rootfs/bin/busybox")
        for applet in ("sh", "nc", "ip", "sleep", "cat", "ls"):
            os.symlink("busybox", self.base / "rootfs/bin" / applet)
        self.rootfs = self.base / "rootfs"
        # The containers' cgroups, in every hierarchy: under a parent of the test's own, removed
        # by close() (podman's default parent, libpod_parent, would stay on the machine).
        self.cgroup_parent = f"/nsrun-test-{self.base.name}"
        conf = self.base / "containers.conf"
        conf.write_text(f"""[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
network_backend = "cni"
network_config_dir = "{cni.confdir}"
cni_plugin_dirs = ["{cni.plugins}", "{REFERENCE}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{self.base / 'events.log'}"
lock_type = "file"
tmp_dir = "{self.base / 'tmp'}"
static_dir = "{self.base / 'root' / 'libpod'}"
volume_path = "{self.base / 'volumes'}"
""")
        self.env = dict(cni.env, CONTAINERS_CONF=str(conf), HOME=str(self.base / "home"))
        self.flags = ["--root", str(self.base / "root"), "--runroot", str(self.base / "runroot"),
                      "--storage-driver", "vfs", "--tmpdir", str(self.base / "tmp"),
                      "--network-config-dir", str(cni.confdir), "--events-backend", "file",
                      "--cgroup-manager", "cgroupfs", "--runtime", "runc", "--volumepath", str(self.base / "volumes")]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if args[:1] == ("exec",) and chrooted():
            raise RuntimeError("podman exec in a chroot would run its program on the machine's root file "
                               "system, not the container's: run it as the container's own process")
        argv = self.cni.lab.host_argv(["podman", *self.flags, *args])
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def cgroups(self) -> list[str]:
        """The directories of the containers' cgroup parent, in every hierarchy, that exist."""
        out = []
        for hierarchy in sorted(os.listdir("/sys/fs/cgroup")):
            path = f"/sys/fs/cgroup/{hierarchy}{self.cgroup_parent}"
            if os.path.isdir(path):
                out.append(path)
        top = f"/sys/fs/cgroup{self.cgroup_parent}"
        return out + ([top] if os.path.isdir(top) and os.path.exists(f"{top}/cgroup.procs") else [])

    def close(self) -> None:
        for path in self.cgroups():
            for sub in sorted((d for d, _, _ in os.walk(path)), key=len, reverse=True):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)

    def run(self, network: str, *cmd: str, detach: bool = False) -> subprocess.CompletedProcess[str]:
        mode = ["-d"] if detach else ["--rm"]
        return self("run", *mode, "--network", network, "--cgroup-parent", self.cgroup_parent,
                    "--rootfs", str(self.rootfs), *cmd)

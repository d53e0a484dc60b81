"""Real .deb files for the tests, built with dpkg-deb, shaped like Sophgo's.

Layout and maintainer scripts follow libsophon's CMake (facts §4): the libsophon postinst
points /opt/sophon/libsophon-current at its prefix and copies libsophon.conf and
libsophon-bin-path.sh into /etc; the driver postinst links the firmware, does what
`dkms add/build/install` does (the source under /usr/src/bmsophon-V, dkms' state and the built
module under /var/lib/dkms/bmsophon/V) and reloads the module; its prerm undoes that like
`dkms remove`. The driver's scripts write absolute paths and ignore $DPKG_ROOT, as Sophgo's
do: run on a sysroot they must run chrooted into it (llmtpu's dpkg --root does), or they would
write this machine's /usr/src. The libsophon scripts honour $DPKG_ROOT. On purpose:

* ldconfig and the real dkms are left out (they would need a kernel and headers);
* "reloading the module" is simulated: in a sysroot the tree's /proc stands for the kernel,
  so the driver postinst writes /proc/bmsophon/driver_version in the format the real
  driver prints (bm_debug.c) -- what `modprobe bmsophon` of the new module would make the
  kernel report. It only does so when the tree has a /proc/bmsophon (a host with a card).

The scripts need a /bin/sh and a few tools inside the sysroot: ``make_runnable`` puts a
static busybox there (the root's shell, as a real board or container image has one).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

#: What the stand-in scripts call; busybox provides each as an applet.
APPLETS = ("sh", "mkdir", "ln", "cp", "rm", "rmdir", "printf", "cat", "sleep", "touch", "dirname", "echo")

#: A driver postinst failing the way the issue saw Sophgo's fail (issue 11 item 16, the module
#: built by dkms refused by the running kernel).
MODPROBE_FAILURE = "modprobe failed: Invalid module format"

RELEASE_DATES = {"0.4.9": "20230914-104810", "0.5.0": "20240304-175610", "0.5.1": "20240717-103602"}


def make_runnable(root: Path) -> Path:
    """Give a sysroot a /bin/sh and the tools the test debs' scripts use (a static busybox)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise FileNotFoundError("busybox (apt-get install busybox-static)")
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    return root


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)


def _build(stage: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(stage), str(out)],
                   check=True, capture_output=True)
    control = (stage / "DEBIAN" / "control").read_text()
    fields = dict(line.split(": ", 1) for line in control.splitlines() if ": " in line)
    return out / f"{fields['Package']}_{fields['Version']}_{fields['Architecture']}.deb"


def _control(stage: Path, package: str, version: str, depends: str = "", arch: str | None = None) -> None:
    (stage / "DEBIAN").mkdir(parents=True, exist_ok=True)
    lines = [f"Package: {package}", f"Version: {version}", f"Architecture: {arch or host_arch()}",
             "Maintainer: sophon team", "Section: devel", "Priority: optional"]
    if depends:
        lines.append(f"Depends: {depends}")
    lines.append(f"Description: test stand-in for Sophgo's {package} {version}")
    (stage / "DEBIAN" / "control").write_text("\n".join(lines) + "\n")


def build_driver(work: Path, out: Path, version: str, arch: str | None = None) -> Path:
    stage = work / f"sophon-driver_{version}"
    prefix = stage / f"opt/sophon/driver-{version}"
    prefix.mkdir(parents=True)
    (prefix / "a53lite_pkg.bin").write_bytes(f"firmware {version}\n".encode())
    (prefix / "dkms.conf").write_text(f'PACKAGE_NAME="bmsophon"\nPACKAGE_VERSION={version}\n')
    (prefix / "bm_drv.c").write_text(f"/* bmsophon {version} */\n")
    _control(stage, "sophon-driver", version, arch=arch)
    release = RELEASE_DATES.get(version, "20240717-103602")
    dkms = f"/var/lib/dkms/bmsophon/{version}"
    # absolute paths, no $DPKG_ROOT: what Sophgo's driver scripts do
    _script(stage / "DEBIAN/postinst", f"""\
mkdir -p /lib/firmware
ln -sfn /opt/sophon/driver-{version}/a53lite_pkg.bin /lib/firmware/bm1684x_firmware.bin
# dkms add: the module source under /usr/src
mkdir -p /usr/src/bmsophon-{version}
cp /opt/sophon/driver-{version}/dkms.conf /opt/sophon/driver-{version}/bm_drv.c /usr/src/bmsophon-{version}/
# dkms build + install: dkms' state and the built module
mkdir -p {dkms}/build {dkms}/module
ln -sfn /usr/src/bmsophon-{version} {dkms}/source
printf 'bmsophon.ko built from bmsophon-{version}\\n' > {dkms}/module/bmsophon.ko
# the tests' switches: a postinst failing halfway (after dkms, at the reload), or a slow one
if [ -e /FAIL-DRIVER-POSTINST ] || [ -e /FAIL-DRIVER-POSTINST-{version} ]; then
  echo "{MODPROBE_FAILURE}" >&2; exit 1
fi
if [ -e /SLOW-DRIVER-POSTINST ]; then touch /DRIVER-POSTINST-STARTED; sleep 4; fi
# stand-in for `modprobe -r bmsophon; modprobe bmsophon`: the sysroot's /proc is its kernel
if [ -d /proc/bmsophon ]; then
  printf 'release version:{version}   release date: {release}\\n' > /proc/bmsophon/driver_version
fi
""")
    # dkms remove, then the firmware link
    _script(stage / "DEBIAN/prerm", f"""\
if [ -e /SLOW-DRIVER-PRERM ]; then touch /DRIVER-PRERM-STARTED; sleep 4; fi
rm -f /lib/firmware/bm1684x_firmware.bin
rm -rf {dkms} /usr/src/bmsophon-{version}
rmdir -p /var/lib/dkms/bmsophon || true
rmdir -p /usr/src || true
""")
    return _build(stage, out)


def build_libsophon(work: Path, out: Path, version: str, arch: str | None = None, marker: str | None = None) -> Path:
    stage = work / f"sophon-libsophon_{version}"
    prefix = stage / f"opt/sophon/libsophon-{version}"
    for sub in ("lib/tpu_module", "bin", "data"):
        (prefix / sub).mkdir(parents=True)
    for name in ("lib/libbmlib.so", "lib/libbmrt.so", "lib/libbmcv.so", "lib/tpu_module/libbm1684x_kernel_module.so",
                 "bin/bm-smi"):
        (prefix / name).write_bytes(f"{name} {version}\n".encode())
    (prefix / "data/libsophon.conf").write_text("/opt/sophon/libsophon-current/lib\n")
    (prefix / "data/libsophon-bin-path.sh").write_text(
        "export PATH=$PATH:/opt/sophon/libsophon-current/bin\n"
        "export PATH=$PATH:/opt/sophon/libsophon-current/bin/bm1684x\n")
    _control(stage, "sophon-libsophon", version, arch=arch)
    # ``marker``: an absolute path the postinst writes ignoring $DPKG_ROOT (where it lands is the test)
    absolute = f'mkdir -p "$(dirname {marker})"\necho written-by-postinst > {marker}\n' if marker else ""
    _script(stage / "DEBIAN/postinst", absolute + f"""\
rm -f "$DPKG_ROOT/opt/sophon/libsophon-current"
ln -s /opt/sophon/libsophon-{version} "$DPKG_ROOT/opt/sophon/libsophon-current"
mkdir -p "$DPKG_ROOT/etc/ld.so.conf.d" "$DPKG_ROOT/etc/profile.d"
cp "$DPKG_ROOT/opt/sophon/libsophon-{version}/data/libsophon.conf" "$DPKG_ROOT/etc/ld.so.conf.d/"
cp "$DPKG_ROOT/opt/sophon/libsophon-{version}/data/libsophon-bin-path.sh" "$DPKG_ROOT/etc/profile.d/"
""")
    _script(stage / "DEBIAN/prerm", """\
rm -f "$DPKG_ROOT/etc/ld.so.conf.d/libsophon.conf" "$DPKG_ROOT/etc/profile.d/libsophon-bin-path.sh"
""")
    _script(stage / "DEBIAN/postrm", 'rm -f "$DPKG_ROOT/opt/sophon/libsophon-current"\n')
    return _build(stage, out)


def build_libsophon_dev(work: Path, out: Path, version: str, arch: str | None = None) -> Path:
    stage = work / f"sophon-libsophon-dev_{version}"
    prefix = stage / f"opt/sophon/libsophon-{version}"
    (prefix / "include").mkdir(parents=True)
    (prefix / "data").mkdir(parents=True)
    (prefix / "include/bmlib_runtime.h").write_text(f"/* bmlib {version} */\n")
    (prefix / "data/libsophon-config.cmake").write_text(f"set(LIBSOPHON_VERSION {version})\n")
    _control(stage, "sophon-libsophon-dev", version, depends=f"sophon-libsophon (= {version})", arch=arch)
    _script(stage / "DEBIAN/postinst", f"""\
mkdir -p "$DPKG_ROOT/usr/lib/cmake/libsophon"
cp "$DPKG_ROOT/opt/sophon/libsophon-{version}/data/libsophon-config.cmake" "$DPKG_ROOT/usr/lib/cmake/libsophon/"
""")
    _script(stage / "DEBIAN/postrm", 'rm -rf "$DPKG_ROOT/usr/lib/cmake/libsophon"\n')
    return _build(stage, out)


def build_release(work: Path, out: Path, version: str, arch: str | None = None, marker: str | None = None,
                  dev: bool = True) -> list[Path]:
    """The debs of one release, in a folder like `llmtpu fetch debs` leaves (``dev``: with the -dev deb).

    A sysroot holding a file /FAIL-DRIVER-POSTINST (or /FAIL-DRIVER-POSTINST-VERSION, for that
    version only) makes the driver's postinst fail halfway;
    /SLOW-DRIVER-POSTINST makes it touch /DRIVER-POSTINST-STARTED and take 4 s (its prerm:
    /SLOW-DRIVER-PRERM, /DRIVER-PRERM-STARTED).
    """
    work.mkdir(parents=True, exist_ok=True)
    built = [build_driver(work, out, version, arch), build_libsophon(work, out, version, arch, marker)]
    return built + ([build_libsophon_dev(work, out, version, arch)] if dev else [])

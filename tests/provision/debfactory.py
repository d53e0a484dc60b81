"""Real .deb files for the tests, built with dpkg-deb, shaped like Sophgo's.

Layout and maintainer scripts follow libsophon's CMake (facts §4): the libsophon postinst
points /opt/sophon/libsophon-current at its prefix and copies libsophon.conf and
libsophon-bin-path.sh into /etc; the driver postinst links the firmware and reloads the
module. Every path goes through "$DPKG_ROOT" so dpkg's --force-script-chrootless can run
them against a sysroot without touching this machine. Two things differ, on purpose:

* ldconfig and dkms are left out (they would act on this machine, not the sysroot);
* "reloading the module" is simulated: in a sysroot the tree's /proc stands for the kernel,
  so the driver postinst writes /proc/bmsophon/driver_version in the format the real
  driver prints (bm_debug.c) -- what `modprobe bmsophon` of the new module would make the
  kernel report. It only does so when the tree has a /proc/bmsophon (a host with a card).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

RELEASE_DATES = {"0.4.9": "20230914-104810", "0.5.0": "20240304-175610", "0.5.1": "20240717-103602"}


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


def _control(stage: Path, package: str, version: str, depends: str = "") -> None:
    (stage / "DEBIAN").mkdir(parents=True, exist_ok=True)
    lines = [f"Package: {package}", f"Version: {version}", f"Architecture: {host_arch()}",
             "Maintainer: sophon team", "Section: devel", "Priority: optional"]
    if depends:
        lines.append(f"Depends: {depends}")
    lines.append(f"Description: test stand-in for Sophgo's {package} {version}")
    (stage / "DEBIAN" / "control").write_text("\n".join(lines) + "\n")


def build_driver(work: Path, out: Path, version: str) -> Path:
    stage = work / f"sophon-driver_{version}"
    prefix = stage / f"opt/sophon/driver-{version}"
    prefix.mkdir(parents=True)
    (prefix / "a53lite_pkg.bin").write_bytes(f"firmware {version}\n".encode())
    (prefix / "dkms.conf").write_text(f'PACKAGE_NAME="bmsophon"\nPACKAGE_VERSION={version}\n')
    _control(stage, "sophon-driver", version)
    release = RELEASE_DATES.get(version, "20240717-103602")
    _script(stage / "DEBIAN/postinst", f"""\
mkdir -p "$DPKG_ROOT/lib/firmware"
ln -sfn /opt/sophon/driver-{version}/a53lite_pkg.bin "$DPKG_ROOT/lib/firmware/bm1684x_firmware.bin"
# the tests' switch for a postinst failing halfway (after the firmware link, before the reload)
if [ -e "$DPKG_ROOT/FAIL-DRIVER-POSTINST" ]; then echo "bmsophon: modprobe failed (test)" >&2; exit 1; fi
# stand-in for `modprobe -r bmsophon; modprobe bmsophon`: the sysroot's /proc is its kernel
if [ -d "$DPKG_ROOT/proc/bmsophon" ]; then
  printf 'release version:{version}   release date: {release}\\n' > "$DPKG_ROOT/proc/bmsophon/driver_version"
fi
""")
    _script(stage / "DEBIAN/prerm", 'rm -f "$DPKG_ROOT/lib/firmware/bm1684x_firmware.bin"\n')
    return _build(stage, out)


def build_libsophon(work: Path, out: Path, version: str) -> Path:
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
    _control(stage, "sophon-libsophon", version)
    _script(stage / "DEBIAN/postinst", f"""\
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


def build_libsophon_dev(work: Path, out: Path, version: str) -> Path:
    stage = work / f"sophon-libsophon-dev_{version}"
    prefix = stage / f"opt/sophon/libsophon-{version}"
    (prefix / "include").mkdir(parents=True)
    (prefix / "data").mkdir(parents=True)
    (prefix / "include/bmlib_runtime.h").write_text(f"/* bmlib {version} */\n")
    (prefix / "data/libsophon-config.cmake").write_text(f"set(LIBSOPHON_VERSION {version})\n")
    _control(stage, "sophon-libsophon-dev", version, depends=f"sophon-libsophon (= {version})")
    _script(stage / "DEBIAN/postinst", f"""\
mkdir -p "$DPKG_ROOT/usr/lib/cmake/libsophon"
cp "$DPKG_ROOT/opt/sophon/libsophon-{version}/data/libsophon-config.cmake" "$DPKG_ROOT/usr/lib/cmake/libsophon/"
""")
    _script(stage / "DEBIAN/postrm", 'rm -rf "$DPKG_ROOT/usr/lib/cmake/libsophon"\n')
    return _build(stage, out)


def build_release(work: Path, out: Path, version: str) -> list[Path]:
    """The three debs of one release, in a folder like `llmtpu fetch debs` leaves.

    A sysroot holding a file /FAIL-DRIVER-POSTINST makes the driver's postinst fail halfway.
    """
    work.mkdir(parents=True, exist_ok=True)
    return [build_driver(work, out, version), build_libsophon(work, out, version),
            build_libsophon_dev(work, out, version)]

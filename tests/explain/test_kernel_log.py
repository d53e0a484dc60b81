"""The doctor's kernel.log check: a sysroot's recorded dmesg, a real dmesg, and one it may not read."""

from __future__ import annotations

import json
from pathlib import Path

from llmtpu.doctor.checks import (
    FAIL,
    OK,
    PCIE_KINDS,
    SKIP,
    SOC_BOARD,
    WARN,
    Check,
    DoctorOptions,
    Facts,
    check_kernel_log,
    run_check,
)
from llmtpu.target import CommandResult, LocalTarget, TargetError

PCIE_DMESG = """\
[    2.511234] bmsophon: loading out-of-tree module taints kernel.
[    2.611000] bmsophon 0000:01:00.0: enabling device (0000 -> 0002)
[    3.141592] bm-sophon0 request_firmware fail, please check if these is bm1684x_firmware.bin in /lib/firmware !!
[    3.200000] bmdrv: firmware load failed!
[    4.000000] e1000e 0000:00:1f.6 eno1: NIC Link is Up 1000 Mbps Full Duplex
[ 8812.000001] bmsophon_ioctl bm-sophon0 bmdrv: bmdev_wait_msgfifo timeout!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""

SOC_DMESG = """\
[    9.100000] bmtpu: loading out-of-tree module taints kernel.
[    9.200000] bm-tpu0: bmdrv: probe start
[    9.300000] ion: ion_bm_heap_create npu heap 0x1dbf00000
"""

KERNEL_LOG_CHECK = Check("kernel.log", "Kernel log errors", (*PCIE_KINDS, SOC_BOARD),
                         "libsophon driver messages; doctor/signatures.toml", check_kernel_log)


def facts_for(root: Path | str) -> Facts:
    return Facts(LocalTarget(str(root)), DoctorOptions())


def record(root: Path, text: str) -> None:
    (root / "_cmd").mkdir(exist_ok=True)
    (root / "_cmd" / "dmesg.txt").write_text(text)


def test_pcie_sysroot_with_driver_errors_fails_with_the_fix(sysroot):
    root = sysroot("pcie-host-ok")
    record(root, PCIE_DMESG)
    res = run_check(KERNEL_LOG_CHECK, facts_for(root))
    assert res.status == FAIL
    assert "kernel.firmware-missing, kernel.firmware-load, kernel.api-timeout" in res.summary
    assert res.fix is not None and res.fix.id == "debs.install"
    assert "sudo dpkg -i sophon-*.deb" in res.fix.commands
    lines = {e.source: e.value for e in res.evidence}
    assert lines["dmesg line 3"].startswith("[    3.141592] bm-sophon0 request_firmware fail")
    assert lines["also kernel.api-timeout"] == "fix none: reboot the machine; if it comes back, check clocks " \
                                             "and temperature with `llmtpu doctor`"
    assert "dmesg line 5" not in lines  # the network card is not ours


def test_soc_sysroot_with_a_clean_driver_log_is_ok(sysroot):
    root = sysroot("soc-board-ok")
    record(root, SOC_DMESG)
    res = run_check(KERNEL_LOG_CHECK, facts_for(root))
    assert res.status == OK
    assert res.summary == "no known error in 3 kernel-log lines (3 from the Sophgo driver)"


def test_sysroot_without_a_recorded_log_skips(sysroot):
    res = run_check(KERNEL_LOG_CHECK, facts_for(sysroot("pcie-host-ok")))
    assert res.status == SKIP
    assert "/_cmd/dmesg.txt" in res.summary


def test_secrets_in_kernel_lines_are_masked_in_evidence(sysroot):
    root = sysroot("pcie-host-ok")
    record(root, "[    3.2] bmdrv: firmware load failed! token=hunter2\n")
    res = run_check(KERNEL_LOG_CHECK, facts_for(root))
    assert res.status == FAIL
    assert all("hunter2" not in e.value for e in res.evidence)


class DeniedDmesg(LocalTarget):
    """This machine, but dmesg answers as it does for a user when kernel.dmesg_restrict=1."""

    def run(self, argv, timeout=30.0, input=None, env=None):
        return CommandResult(tuple(argv), 1, b"", b"dmesg: read kernel buffer failed: Operation not permitted\n")


class NoDmesg(LocalTarget):
    def run(self, argv, timeout=30.0, input=None, env=None):
        raise TargetError(f"{argv[0]}: command not found on {self.name}")


def test_unreadable_dmesg_warns_with_why_never_ok():
    res = check_kernel_log(Facts(DeniedDmesg("/"), DoctorOptions()))
    assert res.status == WARN
    assert "Operation not permitted (run as root?)" in res.summary
    res = check_kernel_log(Facts(NoDmesg("/"), DoctorOptions()))
    assert res.status == WARN
    assert "command not found" in res.summary


def test_real_dmesg_of_this_machine_is_read_or_explained():
    res = check_kernel_log(facts_for("/"))
    assert res.status in (OK, WARN, FAIL)
    if res.status == OK:
        assert res.summary.startswith("no known error in ")
    if res.status == WARN:
        assert res.summary.startswith("kernel log not read: ")


class CountingTarget(LocalTarget):
    """Counts how often the kernel log is read (a sysroot's stand-in for running dmesg)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.dmesg_reads = 0

    def recorded_output(self, name: str) -> str | None:
        self.dmesg_reads += name == "dmesg"
        return super().recorded_output(name)


def test_support_report_reads_the_kernel_log_once(sysroot):
    """The kernel.log check and the report's kernel-log.txt share one read (one dmesg on a board)."""
    from llmtpu.doctor.support_report import collect_report

    root = sysroot("pcie-host-ok")
    record(root, "[    3.2] bmdrv: firmware load failed!\n")
    target = CountingTarget(str(root))
    report = collect_report(target, DoctorOptions())
    doctor = json.loads(report.members["doctor.json"])
    assert next(c for c in doctor["checks"] if c["id"] == "kernel.log")["status"] == "fail"
    assert "firmware load failed" in report.members["kernel-log.txt"].decode()
    assert target.dmesg_reads == 1


def test_a_known_error_gets_the_fix_the_machine_evidence_supports(sysroot):
    """The same line: a reflash only on the board whose kernel predates 20240110 (issue 12 item 3)."""
    line = "[   12.000000] bm-tpu0 bmdrv: request_firmware fail, please check if these is bm1684x_firmware.bin"
    fixes = {}
    for board in ("soc-board-old-kernel", "soc-board-ok"):
        root = sysroot(board)
        record(root, SOC_DMESG + line + "\n")
        res = run_check(KERNEL_LOG_CHECK, facts_for(root))
        assert res.status == FAIL and res.fix is not None
        fixes[board] = res.fix.id
    assert fixes == {"soc-board-old-kernel": "sdcard.flash", "soc-board-ok": "none"}


def test_a_hung_chip_on_a_recent_soc_gets_a_reboot_not_a_reflash(sysroot):
    root = sysroot("soc-board-ok")
    record(root, SOC_DMESG + "[   20.000000] bm-tpu0 tpu api [5:GEMM] timeout\n")
    res = run_check(KERNEL_LOG_CHECK, facts_for(root))
    assert res.fix is not None and res.fix.commands == ("sudo reboot",)

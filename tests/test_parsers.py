"""Parsers of the raw formats, fed every form we know of."""

from __future__ import annotations

from datetime import date

import pytest

from llmtpu.doctor import facts

KERNEL_FORMS = [
    ("#2 SMP Sat Nov 18 10:07:36 HKT 2023", date(2023, 11, 18)),  # the seed README
    ("#1 SMP Thu Aug 15 10:20:28 CST 2024", date(2024, 8, 15)),  # SE7 LTS-SP3
    ("#4 SMP Thu May 16 09:59:04 UTC 2024", date(2024, 5, 16)),  # Airbox v23.10.01
    ("#1 SMP Tue Nov 25 06:55:45 UTC 2025", date(2025, 11, 25)),  # SE7 LTS-SP5
    ("#46-Ubuntu SMP Thu Jul 7 21:29:58 UTC 2022", date(2022, 7, 7)),
    ("#1 SMP PREEMPT Tue Jan 16 09:00:00 CST 2024", date(2024, 1, 16)),
    ("#1 SMP PREEMPT_DYNAMIC Fri Mar 29 12:00:00 +08 2024", date(2024, 3, 29)),
    ("#1 SMP PREEMPT_DYNAMIC Debian 6.1.115-1 (2024-11-01)", date(2024, 11, 1)),
    ("#2 SMP Nov 18 10:07:36 2023", date(2023, 11, 18)),  # no weekday, no timezone
    ("#2 SMP Sat Nov 18 HKT 2023", date(2023, 11, 18)),  # no time
    ("#7 SMP Sat November 18 10:07:36 HKT 2023", date(2023, 11, 18)),  # long month name
    ("Sat Nov 18 10:07:36 HKT 2023\n", date(2023, 11, 18)),
]


@pytest.mark.parametrize("text,expected", KERNEL_FORMS)
def test_kernel_build_date_forms(text: str, expected: date) -> None:
    assert facts.parse_kernel_build_date(text) == expected


@pytest.mark.parametrize("text", ["", "#1 SMP", "#1 SMP Feb 30 10:00:00 UTC 2024", "\x00\xff", "Linux 5.4.217"])
def test_kernel_build_date_rejects(text: str) -> None:
    assert facts.parse_kernel_build_date(text) is None


def test_driver_version_line() -> None:
    parsed = facts.parse_driver_version("release version:0.5.1   release date: 20240717-103602\n")
    assert parsed is not None
    assert parsed.version == "0.5.1" and parsed.released == date(2024, 7, 17)
    assert parsed.built_at is not None and parsed.built_at.hour == 10
    no_time = facts.parse_driver_version("release version:0.5.0   release date: 20240304")
    assert no_time is not None and no_time.built_at is None
    assert facts.parse_driver_version("1682 not support") is None


def test_dpkg_status_stanzas() -> None:
    text = (
        "Package: sophon-driver\nStatus: install ok installed\nVersion: 0.5.1\nDescription: x\n more\n\n"
        "Package: sophon-libsophon\nStatus: install ok half-configured\nVersion: 0.5.1\n\n"
        "Package: broken-no-status\nVersion: 1\n"
    )
    packages = facts.parse_dpkg_status(text)
    assert set(packages) == {"sophon-driver", "sophon-libsophon"}
    assert packages["sophon-driver"].installed and not packages["sophon-libsophon"].installed


def test_cpuinfo_soc_detection() -> None:
    assert facts.parse_cpuinfo_is_bm1684x("processor\t: 0\nmodel name\t: bm1684x\n")
    assert not facts.parse_cpuinfo_is_bm1684x("model name\t: Intel(R) Xeon(R)\n")


def test_meminfo_in_bytes() -> None:
    values = facts.parse_meminfo("MemTotal:  1000 kB\nMemAvailable: 10 kB\nHugePages_Total: 0\n")
    assert values["MemTotal"] == 1024000 and values["HugePages_Total"] == 0
    assert facts.parse_meminfo("garbage") == {}


def test_clk_lines() -> None:
    assert facts.parse_clk("mpll: 2300 MHz\ntpll: 1000 MHz\nbad line\n") == {"mpll": 2300, "tpll": 1000}


def test_ion_summary_format() -> None:
    # bitmain_ion_debugfs.c bm_ion_debug_heap_show: no space between "bytes" and "usage rate".
    text = ("Summary:\n[2] bm_npu_heap heap size:7985954816 bytes, used:1048576 bytesusage rate:1%, "
            "memory usage peak 2097152 bytes\n\nDetails:\n         heap_id   alloc_buf_size\n")
    assert facts.parse_ion_summary(text) == (7985954816, 1048576)
    assert facts.parse_ion_summary("Summary:\n") is None


def test_clock_unit_rates_and_name() -> None:
    from llmtpu.provision import clock

    assert facts.CLOCK_UNIT == clock.UNIT_PATH and facts.CLOCK_UNIT_LINK == clock.WANTS_LINK
    rates = {"tpll_clock": 750_000_000, "mpll_clock": 1_800_000_000, "vpll_clock": 100_000_000}
    assert facts.parse_clock_unit(clock.unit_text(rates)) == rates  # what `clock persist` writes
    assert facts.parse_clock_unit("ExecStart=/bin/sh -c 'echo setr bogus_clock 1 > x'\n# setr tpll_clock 1\n") == {}


def test_bm_version_and_versions() -> None:
    parsed = facts.parse_bm_version("SophonSDK version: v23.09 LTS-SP1\nsophon-soc-libsophon : 0.4.9\n")
    assert parsed is not None and parsed.sdk == "v23.09 LTS-SP1" and parsed.libsophon == "0.4.9"
    assert facts.parse_bm_version("command not found") is None
    assert facts.sdk_key("v23.09 LTS-SP1") == facts.sdk_key("V23.09 LTS SP1")
    assert facts.parse_version("0.4.9-LTS") == (0, 4, 9) and facts.parse_version("LTS") is None


def test_every_sdk_row_maps_to_a_judged_version() -> None:
    from llmtpu.doctor.checks import _version_verdict, version_rules

    rules = version_rules()
    assert all(row["source"] for table in ("date", "libsophon", "driver_release") for row in rules[table])
    verdicts = {row["name"]: (_version_verdict(row["libsophon"]) or {}).get("status", "ok") for row in rules["sdk"]}
    assert verdicts["V23.09 LTS SP1"] == "fail" and verdicts["V23.10.01"] == "warn"
    assert verdicts["V23.09 LTS SP3"] == verdicts["V24.04.01"] == verdicts["V25.03.01"] == "ok"


def test_facts_hold_no_lock_across_instances() -> None:
    """issue 17: a slow fact of one host must not make another host's facts wait."""
    import threading

    from llmtpu.doctor.facts import once

    entered, release = threading.Event(), threading.Event()

    class Host:
        def __init__(self, slow: bool) -> None:
            self.slow = slow
            self.calls = 0

        @once
        def value(self) -> int:
            self.calls += 1
            if self.slow:
                entered.set()
                release.wait(30)
            return 7

    slow, fast = Host(True), Host(False)
    worker = threading.Thread(target=lambda: slow.value)
    worker.start()
    assert entered.wait(30)
    done = threading.Event()
    threading.Thread(target=lambda: (fast.value, done.set())).start()
    assert done.wait(30), "the second instance waited for the first one's fact"
    release.set()
    worker.join(30)
    assert slow.value == fast.value == 7 and slow.calls == fast.calls == 1

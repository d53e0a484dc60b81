"""A stand-in for the BM1684X ``top/clock`` debugfs file, behaving as the kernel driver does.

``top-bm1684.c`` takes one command per write() and copies ``count - 1`` bytes (it expects
echo's newline); ``setr <clk> <rate>`` sets the PLL, whose rate then shows in the common-clock
``clk/<clk>/clk_rate``. In a sysroot ``top/clock`` is a plain file that the production code
really appends to; after each command the stand-in takes the bytes that command appended as
one write and applies them the driver's way, synchronously, as a write() to debugfs returns
only once the driver has run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmtpu.target import CommandResult, LocalTarget

TOP_CLOCK = "sys/kernel/debug/top/clock"


class FakeClockDriver:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / TOP_CLOCK
        self.offset = self.file.stat().st_size
        self.writes: list[bytes] = []

    def take_writes(self) -> None:
        data = self.file.read_bytes()
        written, self.offset = data[self.offset:], len(data)
        if not written:
            return
        self.writes.append(written)
        fields = written[:-1].decode(errors="replace").split()  # copy_from_user(buf, count - 1)
        if len(fields) == 3 and fields[0] == "setr":
            rate_file = self.root / "sys/kernel/debug/clk" / fields[1] / "clk_rate"
            if rate_file.exists():
                rate_file.write_text(f"{int(fields[2], 0)}\n")  # kstrtouint(base 0)

    def expect_truncating_write(self) -> None:
        """The shell's `>` (the unit, the seed's echo) truncates before it writes."""
        self.offset = 0

    def rates(self) -> dict[str, int]:
        clk = self.root / "sys/kernel/debug/clk"
        return {p.name: int((p / "clk_rate").read_text()) for p in sorted(clk.iterdir())}


class BoardWithDriver(LocalTarget):
    """A sysroot whose debugfs clock file is served by the FakeClockDriver: after every append
    (one write()) or command (the unit's own echo lines), the driver takes what was written."""

    def __init__(self, root: str, driver: FakeClockDriver) -> None:
        super().__init__(root)
        self.driver = driver

    def append(self, path: str, data: bytes) -> None:
        super().append(path, data)
        self.driver.take_writes()

    def run(self, argv: Sequence[str], timeout: float = 30.0, input: bytes | None = None,
            env: Mapping[str, str] | None = None, **kwargs: Any) -> CommandResult:
        result = super().run(argv, timeout=timeout, input=input, env=env)
        self.driver.take_writes()
        return result

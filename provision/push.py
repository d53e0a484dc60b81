"""Push a verified bundle to boards over SSH: resumable, verified on the board, switched atomically.

Transport: the OpenSSH client binaries, one multiplexed connection per board (ControlMaster),
aes128-gcm and no compression. Whole files go as one tar stream (headers written here, data
moved by sendfile(2)) into the board's ``tar``; resumed files go through ``cat >>``. Both run at
OpenSSH speed, where paramiko's SFTP loop is CPU-bound in Python (paramiko#1660; see
benchmarks/push.py). Host keys are always checked (StrictHostKeyChecking=yes, never added).
Round trips are few: the lock and the state query share one command, the hash check on the
board (``sha256sum -c``, reading from disk) and the flip share another.

Layout under DEST on the board (``/data/llmtpu`` by default)::

    .lock                       flock held by the pushing session; a second push is refused
    releases/.staging-<digest>  files being received; kept across failures so the next push resumes
    releases/<digest>-<time>/   a verified release; .llmtpu/stamp records size, mtime, inode per file
    current -> releases/...     flipped by rename, so it always names a complete, verified release
    previous -> releases/...    what current named before; `llmtpu rollback` swaps the two

Only files that differ travel: a file already staged with the right size is hashed on the board,
a shorter one is resumed after its prefix hash matches, and a file the live release already has
with the same hash is hard-linked instead of sent. A push of the bundle that is already live and
whose files still match the stamp (the same quick check rsync makes) does nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from llmtpu.provision.bundle import CHUNK, PAYLOAD, BundleError, FileEntry, Manifest, hash_file, verify_bundle

DEFAULT_DEST = "/data/llmtpu"
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
#: sysexits EX_TEMPFAIL: the board's lock is held by another push.
EXIT_BUSY = 75
STAT_FORMAT = "%s %Y %i %n"


class BoardError(Exception):
    """One board failed; the message is one line naming the board's problem and what to do."""


@dataclass(frozen=True)
class Board:
    """How to reach one board with OpenSSH; ``root`` prefixes every path on it (tests, sysroots)."""

    host: str
    port: int = 22
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    root: str = ""

    @property
    def name(self) -> str:
        return self.host if self.port == 22 else f"{self.host}:{self.port}"

    def ssh_options(self) -> list[str]:
        options = ["-F", self.ssh_config] if self.ssh_config else []
        options += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "Compression=no",
                    "-o", f"Ciphers={CIPHERS}", "-o", "ConnectTimeout=10",
                    "-o", "UpdateHostKeys=no", "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
                    "-p", str(self.port)]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity:
            options += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.user:
            options += ["-l", self.user]
        return options

    def path(self, machine_path: str) -> str:
        return self.root.rstrip("/") + machine_path


def parse_hosts(text: str, template: Board) -> list[Board]:
    """``HOST[:PORT],...`` into boards sharing the template's user, key and known_hosts."""
    boards = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "22")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or host.startswith("-"):
            raise ValueError(f"{item!r} is not HOST or HOST:PORT")
        boards.append(Board(host, int(port), template.user, template.identity, template.known_hosts,
                            template.ssh_config, template.root))
    if not boards:
        raise ValueError("no host given")
    return boards


class PushProgress(Protocol):
    """What a renderer hears while boards are pushed (called from worker threads)."""

    def begin(self, board: str, total: int) -> None: ...

    def advance(self, board: str, nbytes: int) -> None: ...

    def phase(self, board: str, text: str) -> None: ...


class SilentProgress:
    def begin(self, board: str, total: int) -> None:
        pass

    def advance(self, board: str, nbytes: int) -> None:
        pass

    def phase(self, board: str, text: str) -> None:
        pass


def remote_command(script: str, args: Sequence[str]) -> str:
    """The one string ssh hands the remote shell: a fixed script, every argument quoted."""
    return " ".join(shlex.quote(word) for word in ("sh", "-c", script, "llmtpu", *args))


def explain(board: Board, what: str, stderr: str) -> BoardError:
    """Turn ssh/tar/shell stderr into one actionable line."""
    text = " ".join(stderr.split())[-300:]
    if "No space left" in text:
        return BoardError(f"{board.name}: disk full on the board while {what}; free space under the "
                          "destination and push again (the live deployment is untouched)")
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return BoardError(f"{board.name}: host key not trusted; add the board's key to known_hosts "
                          "(ssh-keyscan, checked out of band)")
    if "Permission denied" in text:
        return BoardError(f"{board.name}: permission denied while {what}: {text}")
    return BoardError(f"{board.name}: failed while {what}: {text or 'connection lost'}")


class Session:
    """One multiplexed OpenSSH connection to a board, owned by this process and closed by PID."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.workdir = Path(tempfile.mkdtemp(prefix="llmtpu-ssh-"))
        self.socket = str(self.workdir / "mux")
        self.master: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Session:
        log = open(self.workdir / "master.log", "wb")  # noqa: SIM115 - closed right below
        with log:
            self.master = subprocess.Popen(
                ["ssh", *self.board.ssh_options(), "-o", "ControlMaster=yes", "-o", f"ControlPath={self.socket}",
                 "-N", self.board.host],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.master.poll() is not None or time.monotonic() > deadline:
                message = (self.workdir / "master.log").read_text(errors="replace")
                self.close()
                raise explain(self.board, "connecting", message)
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.master is not None and self.master.poll() is None:
            self.master.terminate()
            try:
                self.master.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def argv(self, script: str, args: Sequence[str]) -> list[str]:
        return ["ssh", *self.board.ssh_options(), "-o", "ControlMaster=no", "-o", f"ControlPath={self.socket}",
                self.board.host, remote_command(script, args)]

    def run(self, what: str, script: str, args: Sequence[str], stdin: bytes = b"", timeout: float = 3600,
            allowed: tuple[int, ...] = (0,)) -> str:
        proc = subprocess.run(self.argv(script, args), input=stdin, capture_output=True, timeout=timeout)
        if proc.returncode not in allowed:
            raise explain(self.board, what, proc.stderr.decode(errors="replace"))
        return proc.stdout.decode(errors="replace")

    def stream(self, what: str, script: str, args: Sequence[str], feed: Callable[[int], None]) -> None:
        """Run a remote command and let ``feed`` write its stdin (a pipe fd); errors become BoardError."""
        err = open(self.workdir / "stream.err", "w+b")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(self.argv(script, args), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=err)
        assert proc.stdin is not None
        try:
            try:
                feed(proc.stdin.fileno())
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
            code = proc.wait()
            err.seek(0)
            message = err.read().decode(errors="replace")
        finally:
            err.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            raise explain(self.board, what, message)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def send_file(fd: int, path: Path, offset: int, size: int, advance: Callable[[int], None]) -> None:
    """Bytes offset..size of a file into the pipe with sendfile(2): no copy through Python."""
    with open(path, "rb") as source:
        while offset < size:
            sent = os.sendfile(fd, source.fileno(), offset, min(8 * CHUNK, size - offset))
            if sent == 0:
                raise BoardError(f"{path}: shorter than the manifest says; run `llmtpu bundle verify`")
            offset += sent
            advance(sent)


class BoardLock:
    """flock on DEST/.lock held by a remote `cat` for as long as our connection lives, plus the board's state.

    When the connection dies, sshd closes the channel, `cat` sees EOF and the lock goes with it,
    so an interrupted push never leaves a stale lock behind. The state query rides on the same
    command, so a push that finds nothing to do costs one round trip.
    """

    def __init__(self, session: Session, dest: str, staging: str = "", paths: Sequence[str] = ()) -> None:
        self.session = session
        self.dest = dest
        self.args = [dest, staging or ".", "".join(f"{p}\n" for p in paths)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.state_text = ""

    def __enter__(self) -> BoardLock:
        self.proc = subprocess.Popen(self.session.argv(LOCK_AND_QUERY, self.args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        answer = self.proc.stdout.readline().strip()
        if answer != b"locked":
            self.release()
            assert self.proc.stderr is not None
            stderr = self.proc.stderr.read().decode(errors="replace")
            if answer == b"busy":
                raise BoardError(f"{self.session.board.name}: another push holds {self.dest}/.lock; wait for it "
                                 "to finish, then push again")
            raise explain(self.session.board, "taking the push lock", stderr)
        lines = []
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line == "@end":
                break
            lines.append(line)
        self.state_text = "\n".join(lines)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


LOCK_AND_QUERY = f"""
mkdir -p -- "$1" && exec 9>>"$1/.lock" || exit 70
flock -n 9 || {{ echo busy; exit 75; }}
echo locked
l=$(mktemp) || exit 70
printf '%s' "$3" | tr '\\n' '\\000' > "$l"
cd -- "$1" || exit 70
echo "@current $(readlink current 2>/dev/null)"
echo "@previous $(readlink previous 2>/dev/null)"
echo "@df $(df -Pk . | tail -n 1)"
echo "@stamp"
cat current/.llmtpu/stamp 2>/dev/null
echo "@staging"
[ -d "$2" ] && (cd -- "$2" && xargs -0 -r stat -c '{STAT_FORMAT}' -- < "$l" 2>/dev/null)
echo "@live"
[ -d current ] && (cd current && xargs -0 -r stat -c '{STAT_FORMAT}' -- < "$l" 2>/dev/null)
rm -f "$l"
echo "@end"
exec cat >/dev/null
"""

HASH = """
cd -- "$1" || exit 70
while read -r kind size dir path; do
  if [ "$kind" = P ]; then h=$(head -c "$size" -- "$dir/$path" | sha256sum) || exit 71
  else h=$(sha256sum < "$dir/$path") || exit 71; fi
  printf '%s %s %s\\n' "${h%% *}" "$dir" "$path"
done
"""

RECEIVE_TAR = """
cd -- "$1" && mkdir -p -- "$2/.llmtpu" && cd -- "$2" || exit 70
printf '%s' "$3" | while read -r kind path; do
  case $kind in
    R) rm -f -- "$path" || exit 71 ;;
    L) mkdir -p -- "$(dirname -- "$path")" && rm -f -- "$path" &&
       { ln -- "$1/current/$path" "$path" 2>/dev/null || cp -p -- "$1/current/$path" "$path"; } || exit 71 ;;
  esac
done || exit 71
[ "$4" = send ] || exit 0
exec tar -x -o -f -
"""
RESUME = 'cd -- "$1/$2" && exec cat >> "$3"'

#: $4 is the newline-separated file list, $5 the links ("target<TAB>path" lines), then "MODE<LF>paths" groups.
VERIFY_AND_FLIP = f"""
set -e
dest=$1 staging=$2 release=$3 list=$4 links=$5
shift 5
cd -- "$dest"
started=$(date +%s.%N)
if ! (cd -- "$staging" && sha256sum -c --quiet --strict -); then echo "@mismatch"; exit 72; fi
echo "@verify $started $(date +%s.%N)"
printf '%s' "$list" | tr '\\n' '\\000' > "$staging/.llmtpu/list"
printf '%s' "$links" | while IFS="$(printf '\\t')" read -r target path; do
  mkdir -p -- "$(dirname -- "$staging/$path")"; ln -sfn -- "$target" "$staging/$path"
done
for group in "$@"; do
  mode=${{group%%"
"*}}
  printf '%s' "${{group#*"
"}}" | (cd -- "$staging" && tr '\\n' '\\000' | xargs -0 -r chmod -- "$mode")
done
(cd -- "$staging" && xargs -0 -r sync -- < .llmtpu/list) || sync
mv -T -- "$staging" "$release"
old=$(readlink current || true)
ln -sfn -- "$release" .current.new && mv -Tf -- .current.new current
if [ -n "$old" ] && [ "$old" != "$release" ]; then
  ln -sfn -- "$old" .previous.new && mv -Tf -- .previous.new previous
fi
prev=$(readlink previous || true)
for r in releases/*; do
  if [ "$r" != "$release" ] && [ "$r" != "$prev" ]; then rm -rf -- "$r"; fi
done
cd -- "$release" && xargs -0 -r stat -c '{STAT_FORMAT}' -- < .llmtpu/list > .llmtpu/stamp.new
mv -f .llmtpu/stamp.new .llmtpu/stamp
sync -- .llmtpu/stamp "$dest/current" 2>/dev/null || sync
echo "@previous $old"
"""

RESTAMP = f"""
cd -- "$1/current" && mkdir -p .llmtpu && tr '\\n' '\\000' > .llmtpu/list &&
xargs -0 -r stat -c '{STAT_FORMAT}' -- < .llmtpu/list > .llmtpu/stamp.new && mv -f .llmtpu/stamp.new .llmtpu/stamp
"""

ROLLBACK = """
set -e
cd -- "$1"
cur=$(readlink current || true)
prev=$(readlink previous || true)
if [ -z "$prev" ] || [ ! -d "$prev" ]; then echo "@noprevious"; exit 0; fi
ln -sfn -- "$prev" .current.new && mv -Tf -- .current.new current
if [ -n "$cur" ]; then ln -sfn -- "$cur" .previous.new && mv -Tf -- .previous.new previous; fi
echo "@current $prev"
"""


@dataclass(frozen=True)
class RemoteFile:
    size: int
    mtime: int
    inode: int


def parse_stats(lines: Sequence[str]) -> dict[str, RemoteFile]:
    stats = {}
    for line in lines:
        fields = line.split(" ", 3)
        if len(fields) == 4 and fields[0].isdigit():
            stats[fields[3]] = RemoteFile(int(fields[0]), int(fields[1]), int(fields[2]))
    return stats


@dataclass
class BoardState:
    """What a board holds, read in one round trip."""

    current: str
    previous: str
    free: int
    stamp: dict[str, RemoteFile]
    staging: dict[str, RemoteFile]
    live: dict[str, RemoteFile]

    @classmethod
    def parse(cls, text: str) -> BoardState:
        sections: dict[str, list[str]] = {"@stamp": [], "@staging": [], "@live": []}
        values: dict[str, str] = {}
        section = ""
        for line in text.splitlines():
            word, _, rest = line.partition(" ")
            if word in ("@current", "@previous", "@df"):
                values[word] = rest.strip()
            elif line in sections:
                section = line
            elif section:
                sections[section].append(line)
        df = values.get("@df", "").split()
        free = int(df[3]) * 1024 if len(df) >= 4 and df[3].isdigit() else -1
        return cls(values.get("@current", ""), values.get("@previous", ""), free,
                   parse_stats(sections["@stamp"]), parse_stats(sections["@staging"]), parse_stats(sections["@live"]))


@dataclass
class BoardResult:
    board: str
    status: str  # deployed, unchanged, failed
    release: str = ""
    previous: str = ""
    bytes_sent: int = 0
    files_sent: int = 0
    files_resumed: int = 0
    files_linked: int = 0
    verify_seconds: float = 0.0
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Plan:
    """Per file, what the board needs: nothing, a hard link from the live release, a resume, or all."""

    keep: list[FileEntry] = field(default_factory=list)
    link: list[FileEntry] = field(default_factory=list)
    resume: list[tuple[FileEntry, int]] = field(default_factory=list)
    send: list[FileEntry] = field(default_factory=list)

    @property
    def bytes_to_send(self) -> int:
        return sum(f.size for f in self.send) + sum(f.size - offset for f, offset in self.resume)


def release_prefix(manifest: Manifest) -> str:
    return manifest.digest[:20]


def path_list(entries: Sequence[FileEntry]) -> bytes:
    return "".join(f"{entry.path}\n" for entry in entries).encode()


class BoardPush:
    """Push one bundle to one board: lock, compare, send, verify on the board, flip."""

    def __init__(self, board: Board, bundle: Path, manifest: Manifest, dest: str = DEFAULT_DEST,
                 progress: PushProgress | None = None, checksum: bool = False) -> None:
        self.board = board
        self.bundle = bundle
        self.manifest = manifest
        self.dest = board.path(dest)
        self.progress = progress or SilentProgress()
        self.checksum = checksum
        self.staging = f"releases/.staging-{release_prefix(manifest)}"
        self.result = BoardResult(board.name, "failed")

    def run(self) -> BoardResult:
        started = time.monotonic()
        try:
            self.progress.phase(self.board.name, "connecting")
            paths = [entry.path for entry in self.manifest.files]
            with Session(self.board) as session, BoardLock(session, self.dest, self.staging, paths) as lock:
                self.deploy(session, BoardState.parse(lock.state_text))
        except BoardError as exc:
            self.result.status = "failed"
            self.result.message = str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            self.result.status = "failed"
            self.result.message = f"{self.board.name}: {exc}"
        self.result.seconds = round(time.monotonic() - started, 3)
        self.progress.phase(self.board.name, self.result.status)
        return self.result

    def deploy(self, session: Session, state: BoardState) -> None:
        files = self.manifest.files
        live_is_ours = os.path.basename(state.current).startswith(release_prefix(self.manifest))
        self.result.previous = state.previous
        if live_is_ours and not self.checksum and self.quick_match(state):
            self.result.status, self.result.release = "unchanged", state.current
            self.progress.begin(self.board.name, 0)
            return
        plan = self.plan(session, state)
        if live_is_ours and len(plan.link) == len(files):
            session.run("stamping the live release", RESTAMP, [self.dest], path_list(files))
            self.result.status, self.result.release = "unchanged", state.current
            self.progress.begin(self.board.name, 0)
            return
        needed = plan.bytes_to_send
        if 0 <= state.free < needed:
            raise BoardError(f"{self.board.name}: disk full: {needed >> 20} MiB to send, {state.free >> 20} MiB "
                             f"free under {self.dest}; free space and push again (the live deployment is untouched)")
        self.progress.begin(self.board.name, needed)
        self.transfer(session, plan)
        self.verify_and_flip(session)

    def quick_match(self, state: BoardState) -> bool:
        """The rsync quick check against the stamp written when the live release was verified."""
        for entry in self.manifest.files:
            seen = state.live.get(entry.path)
            if seen is None or seen.size != entry.size or state.stamp.get(entry.path) != seen:
                return False
        return True

    def plan(self, session: Session, state: BoardState) -> Plan:
        """Size first; the board hashes only same-size candidates and the prefixes to resume from."""
        plan = Plan()
        requests: list[str] = []
        for entry in self.manifest.files:
            staged, live = state.staging.get(entry.path), state.live.get(entry.path)
            if staged is not None and staged.size == entry.size:
                requests.append(f"F 0 {self.staging} {entry.path}")
            elif staged is not None and 0 < staged.size < entry.size:
                requests.append(f"P {staged.size} {self.staging} {entry.path}")
            if live is not None and live.size == entry.size:
                requests.append(f"F 0 current {entry.path}")
        hashes: dict[tuple[str, str], str] = {}
        if requests:
            self.progress.phase(self.board.name, "hashing on board")
            out = session.run("hashing files on the board", HASH, [self.dest], "\n".join(requests).encode() + b"\n")
            for line in out.splitlines():
                digest, _, rest = line.partition(" ")
                where, _, path = rest.partition(" ")
                hashes[(where, path)] = digest
        for entry in self.manifest.files:
            staged = state.staging.get(entry.path)
            if hashes.get((self.staging, entry.path)) == entry.sha256 and staged and staged.size == entry.size:
                plan.keep.append(entry)
            elif hashes.get(("current", entry.path)) == entry.sha256:
                plan.link.append(entry)
            elif staged is not None and 0 < staged.size < entry.size and \
                    hashes.get((self.staging, entry.path)) == hash_file(self.local(entry), limit=staged.size):
                plan.resume.append((entry, staged.size))
            else:
                plan.send.append(entry)
        return plan

    def local(self, entry: FileEntry) -> Path:
        return self.bundle / PAYLOAD / entry.path

    def advance(self, nbytes: int) -> None:
        self.result.bytes_sent += nbytes
        self.progress.advance(self.board.name, nbytes)

    def transfer(self, session: Session, plan: Plan) -> None:
        """Clear and hard-link in the staging folder, then one tar stream of whole files, then resumes."""
        commands = "".join(f"R {e.path}\n" for e in plan.send) + "".join(f"L {e.path}\n" for e in plan.link)
        self.result.files_linked = len(plan.link)
        self.progress.phase(self.board.name, "sending")
        session.stream("sending files", RECEIVE_TAR,
                       [self.dest, self.staging, commands, "send" if plan.send else "prepare"],
                       lambda fd: self.write_tar(fd, plan.send))
        self.result.files_sent = len(plan.send)
        for entry, offset in plan.resume:
            self.progress.phase(self.board.name, f"resuming {entry.path}")
            session.stream(f"resuming {entry.path}", RESUME, [self.dest, self.staging, entry.path],
                           partial(send_file, path=self.local(entry), offset=offset, size=entry.size,
                                   advance=self.advance))
            self.result.files_resumed += 1

    def write_tar(self, fd: int, entries: Sequence[FileEntry]) -> None:
        """A ustar/GNU stream written by hand so file data moves by sendfile(2), never through Python."""
        if not entries:
            return
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.size, info.mode, info.mtime = entry.size, entry.mode, int(time.time())
            write_all(fd, info.tobuf(format=tarfile.GNU_FORMAT))
            send_file(fd, self.local(entry), 0, entry.size, self.advance)
            write_all(fd, bytes(-entry.size % tarfile.BLOCKSIZE))
        write_all(fd, bytes(2 * tarfile.BLOCKSIZE))

    def verify_and_flip(self, session: Session) -> None:
        """sha256sum -c on the board, reading back from disk; only a clean check flips `current`."""
        files = self.manifest.files
        self.progress.phase(self.board.name, "verifying on board")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1000000:06d}Z"
        release = f"releases/{release_prefix(self.manifest)}-{stamp}"
        links = "".join(f"{link.target}\t{link.path}\n" for link in self.manifest.links)
        groups: dict[int, list[str]] = {}
        for entry in files:
            groups.setdefault(entry.mode, []).append(entry.path)
        modes = [f"{mode:o}\n" + "".join(f"{p}\n" for p in paths) for mode, paths in groups.items()]
        sums = "".join(f"{e.sha256}  {e.path}\n" for e in files).encode()
        out = session.run("verifying and switching the release", VERIFY_AND_FLIP,
                          [self.dest, self.staging, release, path_list(files).decode(), links, *modes],
                          sums, allowed=(0, 72))
        if "@mismatch" in out:
            bad = [line.rsplit(": ", 1)[0] for line in out.splitlines() if ": FAILED" in line]
            raise BoardError(f"{self.board.name}: {len(bad)} file(s) differ on the board after sending "
                             f"({', '.join(bad[:3])}); push again to re-send them")
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            if word == "@previous":
                self.result.previous = rest
            elif word == "@verify" and len(rest.split()) == 2:
                begin, end = rest.split()
                self.result.verify_seconds = round(float(end) - float(begin), 3)
        self.result.status, self.result.release = "deployed", release


def board_for_target(target: object) -> Board:
    """The push Board for a host the fleet reached: same address, login, key and known_hosts files.

    Push speaks OpenSSH, not paramiko, so it needs the host's connection details; a local
    machine or sysroot has none (push needs a board reached over SSH)."""
    from llmtpu.ssh import SSHTarget

    if not isinstance(target, SSHTarget):
        raise ValueError(f"{getattr(target, 'name', target)}: push needs a board reached over SSH "
                         "(--inventory or --hosts)")
    spec, options = target.spec, target.options
    if spec.jump:
        raise ValueError(f"{spec.name}: push does not go through ProxyJump hosts yet; push from the jump host")
    identities = (*spec.identity_files, *options.identity_files)
    known = " ".join(str(p) for p in options.store.files if p.exists()) or None
    return Board(spec.hostname, spec.port, spec.login, identities[0] if identities else None, known,
                 "/dev/null", "" if spec.root == "/" else spec.root.rstrip("/"))


def verified_manifest(bundle: Path) -> Manifest:
    """The bundle's manifest, after every file is checked against it; refuses a tampered bundle."""
    checked = verify_bundle(bundle)
    if not checked.ok:
        raise BundleError(f"{bundle}: {checked.problems[0]}"
                          + (f" (and {len(checked.problems) - 1} more)" if len(checked.problems) > 1 else "")
                          + "; rebuild it with `llmtpu bundle create`")
    return checked.manifest


def push_fleet(bundle: Path, boards: Sequence[Board], dest: str = DEFAULT_DEST, parallel: int = 8,
               progress: PushProgress | None = None, checksum: bool = False) -> list[BoardResult]:
    """Verify the bundle locally, then push it to every board, at most ``parallel`` at a time.

    A board that fails reports why and never stops the others.
    """
    manifest = verified_manifest(bundle)
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(BoardPush(board, bundle, manifest, dest, progress, checksum).run) for board in boards]
        return [future.result() for future in futures]


def rollback_board(board: Board, dest: str = DEFAULT_DEST) -> BoardResult:
    """Swap current and previous on one board (under the push lock)."""
    result = BoardResult(board.name, "failed")
    started = time.monotonic()
    try:
        with Session(board) as session, BoardLock(session, board.path(dest)):
            out = session.run("rolling back", ROLLBACK, [board.path(dest)])
            if "@noprevious" in out:
                raise BoardError(f"{board.name}: no previous deployment under {dest} to roll back to")
            result.status = "rolled-back"
            result.release = out.split("@current ", 1)[1].strip()
    except BoardError as exc:
        result.message = str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        result.message = f"{board.name}: {exc}"
    result.seconds = round(time.monotonic() - started, 3)
    return result


def rollback_fleet(boards: Sequence[Board], dest: str = DEFAULT_DEST, parallel: int = 8) -> list[BoardResult]:
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(lambda board: rollback_board(board, dest), boards))

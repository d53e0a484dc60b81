"""Push a verified bundle to boards over SSH: resumable, verified on the board, switched atomically.

Transport: the OpenSSH client binaries, one multiplexed connection per board (ControlMaster),
aes128-gcm and no compression. Whole files go as one tar stream (headers written here, data
moved by sendfile(2)) into the board's ``tar``; resumed files go through ``cat >>``. Both run at
OpenSSH speed, where paramiko's SFTP loop is CPU-bound in Python (paramiko#1660; see
benchmarks/push.py). Host keys are always checked (StrictHostKeyChecking=yes, never added).
Round trips are few: the lock and the state query share one command, the hash check on the
board (``openssl dgst`` or ``sha256sum``, reading from disk) and the flip share another.

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
import re
import select
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from llmtpu.provision.bundle import CHUNK, PAYLOAD, BundleError, FileEntry, Manifest, hash_file, verify_bundle

DEFAULT_DEST = "/data/llmtpu"
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
#: sysexits EX_TEMPFAIL: the board's lock is held by another push.
EXIT_BUSY = 75
#: The slowest disk, hash or link rate (bytes/s) a step may run at before its deadline passes.
SLOWEST_RATE = 4 << 20


class BoardError(Exception):
    """One board failed; the message is one line naming the board's problem and what to do."""


class DiskFull(BoardError):
    """The board ran out of space while receiving; the push says how much is free and needed."""


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
    for line in stderr.splitlines():
        if line.startswith("@refuse "):
            return BoardError(f"{board.name}: refused: {line[len('@refuse '):]}")
    text = " ".join(stderr.split())[-300:]
    if "No space left" in text:
        return DiskFull(f"disk full on {board.name} while {what}; free space under the destination and push "
                        "again (the live deployment is untouched)")
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return BoardError(f"{board.name}: host key not trusted; add the board's key to known_hosts "
                          "(ssh-keyscan, checked out of band)")
    if "Permission denied" in text:
        return BoardError(f"{board.name}: permission denied while {what}: {text}")
    return BoardError(f"{board.name}: failed while {what}: {text or 'connection lost'}")


class Interrupted(BoardError):
    """SIGINT/SIGTERM arrived before this board's push finished; a rerun resumes it."""


def kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


class Cancel:
    """Set on SIGINT/SIGTERM: every ssh process of the pushes in flight is killed and no new step starts.

    ``detached``: the caller turns those signals into :meth:`set`, so ssh processes start in their
    own session, out of reach of a terminal's Ctrl-C, and are stopped here instead. Without a
    handler they stay in the caller's process group, where the Ctrl-C stops them as it stops us.
    """

    def __init__(self, detached: bool = False) -> None:
        self.detached = detached
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.procs: set[subprocess.Popen[bytes]] = set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        with self.lock:
            self.event.set()
            procs = list(self.procs)
        for proc in procs:
            kill_quietly(proc)

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.procs.add(proc)
            if not self.event.is_set():
                return
        kill_quietly(proc)

    def finished(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.procs.discard(proc)


class Deadline:
    """Kills a process that outlives its step, and the board's ControlMaster (which holds the step's
    pipes open while the board never answers); ``expired`` then says why they died."""

    def __init__(self, proc: subprocess.Popen[bytes], seconds: float,
                 master: subprocess.Popen[bytes] | None = None) -> None:
        self.proc = proc
        self.master = master
        self.expired = False
        self.timer = threading.Timer(seconds, self.expire)
        self.timer.daemon = True

    def expire(self) -> None:
        self.expired = True
        kill_quietly(self.proc)
        if self.master is not None:
            kill_quietly(self.master)

    def __enter__(self) -> Deadline:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()


def check_board(board: Board) -> None:
    """A host or login that ssh could read as an option (``-oProxyCommand=...``) never reaches its argv."""
    for what, value in (("host", board.host), ("user", board.user or "")):
        if value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value) or (what == "host" and not value):
            raise BoardError(f"{value!r}: not a valid {what} name for ssh; fix the inventory or --hosts")


class Session:
    """One multiplexed OpenSSH connection to a board, owned by this process and closed by PID.

    Every remote step runs under a deadline (``timeout`` plus time for the bytes it moves) and
    under ``cancel``, which stops its ssh processes; closing always removes the llmtpu-ssh-* folder.
    """

    def __init__(self, board: Board, timeout: float = 60, cancel: Cancel | None = None) -> None:
        check_board(board)
        self.board = board
        self.timeout = timeout
        self.cancel = cancel or Cancel()
        self.workdir = Path(tempfile.mkdtemp(prefix="llmtpu-ssh-"))
        self.socket = str(self.workdir / "mux")
        self.master: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Session:
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def connect(self) -> None:
        self.check_cancel("connecting")
        with open(self.workdir / "master.log", "wb") as log:
            self.master = subprocess.Popen(
                ["ssh", *self.board.ssh_options(), "-o", "ControlMaster=yes", "-o", f"ControlPath={self.socket}",
                 "-N", self.board.host],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=self.cancel.detached)
        self.cancel.started(self.master)
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(self.socket):
            self.check_cancel("connecting")
            if self.master.poll() is not None:
                raise explain(self.board, "connecting", (self.workdir / "master.log").read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise self.timed_out("connecting", self.timeout)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.master is not None:
            if self.master.poll() is None:
                self.master.terminate()
                try:
                    self.master.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.master.kill()
                    self.master.wait()
            self.cancel.finished(self.master)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def argv(self, script: str, args: Sequence[str]) -> list[str]:
        return ["ssh", *self.board.ssh_options(), "-o", "ControlMaster=no", "-o", f"ControlPath={self.socket}",
                self.board.host, remote_command(script, args)]

    def deadline(self, nbytes: int = 0) -> float:
        """Seconds a step may take: the board's answer time plus its bytes at the slowest rate we accept."""
        return self.timeout + nbytes / SLOWEST_RATE

    def check_cancel(self, what: str) -> None:
        if self.cancel.is_set():
            raise Interrupted(f"{self.board.name}: interrupted while {what}; run the same command again to resume")

    def timed_out(self, what: str, seconds: float) -> BoardError:
        return BoardError(f"{self.board.name}: timed out after {seconds:.0f} s while {what}: the board took the "
                          "login but did not answer; check its load and login shell, then run again")

    def spawn(self, what: str, script: str, args: Sequence[str], **popen: object) -> subprocess.Popen[bytes]:
        self.check_cancel(what)
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            self.argv(script, args), start_new_session=self.cancel.detached, **popen)
        self.cancel.started(proc)
        return proc

    def reap(self, proc: subprocess.Popen[bytes]) -> None:
        kill_quietly(proc)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self.cancel.finished(proc)

    def judge(self, what: str, deadline: Deadline, seconds: float) -> None:
        """Why a step died, when it was not the board's own answer: our deadline or an interrupt."""
        if deadline.expired:
            raise self.timed_out(what, seconds)
        self.check_cancel(what)

    def run(self, what: str, script: str, args: Sequence[str], stdin: bytes = b"", nbytes: int = 0,
            allowed: tuple[int, ...] = (0,)) -> str:
        seconds = self.deadline(nbytes)
        proc = self.spawn(what, script, args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with Deadline(proc, seconds, self.master) as deadline:
                out, err = proc.communicate(stdin)
        finally:
            self.reap(proc)
        if proc.returncode not in allowed:
            self.judge(what, deadline, seconds)
            raise explain(self.board, what, err.decode(errors="replace"))
        return out.decode(errors="replace")

    def stream(self, what: str, script: str, args: Sequence[str], feed: Callable[[int], None],
               nbytes: int = 0) -> None:
        """Run a remote command and let ``feed`` write its stdin (a pipe fd); errors become BoardError."""
        seconds = self.deadline(nbytes)
        with open(self.workdir / "stream.err", "w+b") as err:
            proc = self.spawn(what, script, args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            assert proc.stdin is not None
            try:
                with Deadline(proc, seconds, self.master) as deadline:
                    try:
                        feed(proc.stdin.fileno())
                        proc.stdin.close()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    code = proc.wait()
            finally:
                self.reap(proc)
            err.seek(0)
            message = err.read().decode(errors="replace")
        if code != 0:
            self.judge(what, deadline, seconds)
            raise explain(self.board, what, message)


def read_available(fd: int, seconds: float) -> bytes:
    """What a pipe holds until EOF, for at most ``seconds``: the ControlMaster may keep it open."""
    data = b""
    deadline = time.monotonic() + seconds
    while len(data) < 1 << 16:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        data += chunk
    return data


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

    def __init__(self, session: Session, dest: str, staging: str = "") -> None:
        self.session = session
        self.dest = dest
        self.args = [dest, staging or "."]
        self.proc: subprocess.Popen[bytes] | None = None
        self.state_text = ""

    def __enter__(self) -> BoardLock:
        what = "taking the push lock"
        self.proc = self.session.spawn(what, LOCK_AND_QUERY, self.args, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        seconds = self.session.deadline()
        lines: list[str] = []
        complete = False
        with Deadline(self.proc, seconds, self.session.master) as deadline:
            answer = self.proc.stdout.readline().strip()
            if answer == b"locked":
                for raw in self.proc.stdout:
                    line = raw.decode(errors="replace").rstrip("\n")
                    if line == "@end":
                        complete = True
                        break
                    lines.append(line)
        if not complete:
            stderr = b"" if deadline.expired else read_available(self.proc.stderr.fileno(), 5)
            self.release()
            self.session.judge(what, deadline, seconds)
            if answer == b"busy":
                raise BoardError(f"{self.session.board.name}: another push holds {self.dest}/.lock; wait for it "
                                 "to finish, then push again")
            raise explain(self.session.board, what, stderr.decode(errors="replace"))
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
            pass
        self.session.reap(self.proc)
        self.proc = None


#: Shell functions every board-side script starts with. A name under DEST that llmtpu did not make
#: (a link where a folder or file should be, a current/previous pointing anywhere but a release
#: folder) stops the script with "@refuse <one line>" on stderr and exit 73; nothing is followed.
GUARD = r"""
export LC_ALL=C
refuse() { printf '@refuse %s\n' "$*" >&2; exit 73; }
own_dir() {
  if [ -L "$1" ] || { [ -e "$1" ] && [ ! -d "$1" ]; }; then
    refuse "$PWD/$1 is a link or not a folder, which llmtpu never makes: move it away, then run again"
  fi
  if [ ! -d "$1" ]; then mkdir -- "$1" || exit 70; fi
}
release_of() {
  r=
  if [ ! -L "$1" ]; then
    if [ -e "$1" ]; then refuse "$PWD/$1 is not a link made by llmtpu: move it away, then run again"; fi
    return 0
  fi
  t=$(readlink -- "$1")
  n=${t#releases/}
  case $n in ''|.*|*[!a-zA-Z0-9._-]*) n= ;; esac
  if [ -z "$n" ] || [ "releases/$n" != "$t" ]; then
    refuse "$PWD/$1 does not point to a release folder under $PWD/releases: remove the link, then run again"
  fi
  if [ -d "$t" ] && [ ! -L "$t" ]; then r=$t; fi
}
new_link() {
  if [ -L "$2" ]; then rm -f -- "$2"
  elif [ -e "$2" ]; then refuse "$PWD/$2 is in the way (llmtpu makes it as a link): move it away, then run again"
  fi
  ln -s -- "$1" "$2" && mv -Tf -- "$2" "$3"
}
list_files() {
  find -P "$1" -name '*[[:cntrl:]]*' -prune -o -type f -printf '%s %T@ %i %P\n'
}
"""

LOCK_AND_QUERY = GUARD + r"""
mkdir -p -- "$1" && cd -- "$1" || exit 70
if [ -L .lock ] || { [ -e .lock ] && [ ! -f .lock ]; }; then
  refuse "$PWD/.lock is a link or not a file, which llmtpu never makes: remove it, then run again"
fi
exec 9>>.lock || exit 70
flock -n 9 || { echo busy; exit 75; }
own_dir releases
release_of current; cur=$r
release_of previous; prev=$r
if [ "$2" != . ]; then
  if [ -L "$2" ] || { [ -e "$2" ] && [ ! -d "$2" ]; }; then
    refuse "$PWD/$2 is a link or not a folder, which llmtpu never makes: remove it, then push again"
  fi
  if [ -d "$2" ]; then find -P "$2" -mindepth 1 ! -type d ! -type f -exec rm -f -- {} + || exit 70; fi
fi
echo locked
echo "@current $cur"
echo "@previous $prev"
echo "@df $(df -Pk . | tail -n 1)"
echo "@stamp"
if [ -n "$cur" ] && [ ! -L "$cur/.llmtpu" ] && [ ! -L "$cur/.llmtpu/stamp" ] && [ -f "$cur/.llmtpu/stamp" ]; then
  cat -- "$cur/.llmtpu/stamp"
fi
echo "@staging"
if [ "$2" != . ] && [ -d "$2" ]; then list_files "$2"; fi
echo "@live"
if [ -n "$cur" ]; then list_files "$cur"; fi
echo "@end"
exec cat >/dev/null
"""

#: stdin: NUL-separated records of four fields (F|P, prefix size, folder, path); prints "sha256 folder path".
HASH = r"""
cd -- "$1" || exit 70
exec xargs -0 -r -n 4 sh -c '
f=$2/$3
if [ -L "$f" ] || [ ! -f "$f" ]; then exit 0; fi
if [ "$0" = P ]; then h=$(head -c "$1" -- "$f" | sha256sum) || exit 255
else h=$(sha256sum < "$f") || exit 255; fi
printf "%s %s %s\n" "${h%% *}" "$2" "$3"'
"""

#: $3 paths to remove and $4 paths to hard-link from the live release $5 (one per line: the bundle's
#: names hold no control characters), then the tar stream when $6 is "send".
RECEIVE_TAR = GUARD + r"""
cd -- "$1" || exit 70
own_dir releases
if [ -L "$2" ]; then refuse "$PWD/$2 is a link, which llmtpu never makes: remove it, then push again"; fi
mkdir -p -- "$2/.llmtpu" && cd -- "$2" || exit 70
printf '%s' "$3" | tr '\n' '\0' | xargs -0 -r rm -f -- || exit 71
printf '%s' "$4" | tr '\n' '\0' | xargs -0 -r -n 1 sh -c '
  mkdir -p -- "$(dirname -- "$1")" && rm -f -- "$1" && { ln -- "$0/$1" "$1" 2>/dev/null || cp -p -P -- "$0/$1" "$1"; }
' "$1/$5" || exit 71
[ "$6" = send ] || exit 0
exec tar -x -o -f -
"""
RESUME = r'cd -- "$1/$2" && if [ -L "$3" ] || [ ! -f "$3" ]; then exit 71; fi && exec cat >> "$3"'

#: $4 the file list, $5 the links ("target" and "path" lines in turn), then "MODE<LF>paths" groups;
#: stdin is "SHA256 *./PATH" per file, sorted bytewise. Names hold no control characters (bundle verify).
#: The hash is `openssl dgst` where the board has a working one (several times faster than
#: sha256sum, files spread over the board's cores), else `sha256sum -c`; a mismatch is named by
#: `sha256sum -c` either way. The files' fsync runs while they are hashed, and ends before the flip.
VERIFY_AND_FLIP = GUARD + r"""
set -e
dest=$1 staging=$2 release=$3 list=$4 links=$5
shift 5
cd -- "$dest"
own_dir releases
if [ -L "$staging" ] || [ ! -d "$staging" ]; then refuse "$PWD/$staging is missing or a link: push again"; fi
started=$(date +%s.%N)
cd -- "$staging"
cat > .llmtpu/expected
printf '%s' "$list" | tr '\n' '\0' > .llmtpu/list
printf '%s' "$links" | tr '\n' '\0' | xargs -0 -r -n 2 sh -c 'mkdir -p -- "$(dirname -- "$1")" && ln -sfn -- "$0" "$1"'
for group in "$@"; do
  mode=${group%%"
"*}
  printf '%s' "${group#*"
"}" | tr '\n' '\0' | xargs -0 -r chmod -- "$mode"
done
{ xargs -0 -r sync -- < .llmtpu/list 2>/dev/null || sync; } >/dev/null 2>&1 &
flushing=$!
empty=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
if [ "$(printf '' | openssl dgst -sha256 -r 2>/dev/null)" = "$empty *stdin" ]; then
  printf '%s' "$list" | sed 's|^|./|' | tr '\n' '\0' |
    xargs -0 -r -P "$(nproc 2>/dev/null || echo 2)" -n 4 openssl dgst -sha256 -r | sort > .llmtpu/got || true
  if ! cmp -s .llmtpu/expected .llmtpu/got; then
    sha256sum -c --quiet --strict .llmtpu/expected || true
    echo "@mismatch"; exit 72
  fi
  echo "@hash openssl"
elif sha256sum -c --quiet --strict .llmtpu/expected; then echo "@hash sha256sum"
else echo "@mismatch"; exit 72
fi
echo "@verify $started $(date +%s.%N)"
wait "$flushing"
rm -f .llmtpu/expected .llmtpu/got
cd -- "$dest"
mv -T -- "$staging" "$release"
release_of current; old=$r
new_link "$release" .current.new current
if [ -n "$old" ] && [ "$old" != "$release" ]; then new_link "$old" .previous.new previous; fi
release_of previous; prev=$r
for r in releases/* releases/.[!.]* releases/..?*; do
  if [ -e "$r" ] || [ -L "$r" ]; then
    if [ "$r" != "$release" ] && [ "$r" != "$prev" ]; then rm -rf -- "$r"; fi
  fi
done
cd -- "$release"
list_files . > .llmtpu/stamp.new
mv -f .llmtpu/stamp.new .llmtpu/stamp
sync -- .llmtpu/stamp "$dest/current" 2>/dev/null || sync
echo "@previous $old"
"""

RESTAMP = GUARD + r"""
cd -- "$1" || exit 70
release_of current
if [ -z "$r" ] || [ "$r" != "$2" ]; then refuse "$PWD/current changed during the push: push again"; fi
cd -- "$r" && own_dir .llmtpu
list_files . > .llmtpu/stamp.new && mv -f .llmtpu/stamp.new .llmtpu/stamp
"""

ROLLBACK = GUARD + r"""
set -e
cd -- "$1"
release_of current; cur=$r
release_of previous; prev=$r
if [ -z "$prev" ]; then echo "@noprevious"; exit 0; fi
new_link "$prev" .current.new current
if [ -n "$cur" ]; then new_link "$cur" .previous.new previous; fi
echo "@current $prev"
"""

#: The only form of a release folder llmtpu makes (and the board scripts accept): releases/NAME.
RELEASE_NAME = re.compile(r"releases/[a-zA-Z0-9_-][a-zA-Z0-9._-]*")


@dataclass(frozen=True)
class RemoteFile:
    size: int
    mtime: int
    inode: int


def parse_stats(lines: Sequence[str]) -> dict[str, RemoteFile]:
    stats = {}
    for line in lines:
        fields = line.split(" ", 3)
        mtime = fields[1].partition(".")[0] if len(fields) == 4 else ""
        if len(fields) == 4 and fields[0].isdigit() and mtime.lstrip("-").isdigit() and fields[2].isdigit():
            stats[fields[3]] = RemoteFile(int(fields[0]), int(mtime), int(fields[2]))
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
        current, previous = (values.get(key, "") for key in ("@current", "@previous"))
        return cls(current if RELEASE_NAME.fullmatch(current) else "",
                   previous if RELEASE_NAME.fullmatch(previous) else "", free,
                   parse_stats(sections["@stamp"]), parse_stats(sections["@staging"]), parse_stats(sections["@live"]))


@dataclass
class BoardResult:
    board: str
    status: str  # deployed, unchanged, rolled-back, failed, interrupted
    release: str = ""
    previous: str = ""
    bytes_sent: int = 0
    files_sent: int = 0
    files_resumed: int = 0
    files_linked: int = 0
    verify_seconds: float = 0.0
    verify_tool: str = ""  # openssl or sha256sum: what hashed the files on the board
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


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


@contextmanager
def cancel_on_signals() -> Iterator[Cancel]:
    """SIGINT and SIGTERM cancel the pushes in flight (their ssh processes stop, temp folders go)
    instead of killing llmtpu mid-way; the handlers are restored afterwards. Off the main thread
    (where no handler can be set) a plain Cancel."""
    if threading.current_thread() is not threading.main_thread():
        yield Cancel()
        return
    cancel = Cancel(detached=True)
    previous = {sig: signal.signal(sig, lambda *_: cancel.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class BoardPush:
    """Push one bundle to one board: lock, compare, send, verify on the board, flip."""

    def __init__(self, board: Board, bundle: Path, manifest: Manifest, dest: str = DEFAULT_DEST,
                 progress: PushProgress | None = None, checksum: bool = False, timeout: float = 60,
                 cancel: Cancel | None = None) -> None:
        self.board = board
        self.timeout = timeout
        self.cancel = cancel or Cancel()
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
            with Session(self.board, self.timeout, self.cancel) as session, \
                    BoardLock(session, self.dest, self.staging) as lock:
                self.deploy(session, BoardState.parse(lock.state_text))
        except Interrupted as exc:
            self.result.status = "interrupted"
            self.result.message = str(exc)
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
            session.run("stamping the live release", RESTAMP, [self.dest, state.current])
            self.result.status, self.result.release = "unchanged", state.current
            self.progress.begin(self.board.name, 0)
            return
        needed = plan.bytes_to_send
        if 0 <= state.free < needed:
            raise self.disk_full(state.free, needed)
        self.progress.begin(self.board.name, needed)
        try:
            self.transfer(session, plan, state.current)
        except DiskFull:
            free = session.run("measuring free space", 'cd -- "$1" && df -Pk . | tail -n 1', [self.dest]).split()
            raise self.disk_full(int(free[3]) * 1024 if len(free) >= 4 and free[3].isdigit() else 0,
                                 needed) from None
        self.verify_and_flip(session)

    def disk_full(self, free: int, needed: int) -> BoardError:
        return BoardError(f"disk full on {self.board.name}: {mib(free)} free, {mib(needed)} needed under "
                          f"{self.dest}; free space and push again (the live deployment is untouched)")

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
        requests: list[tuple[str, int, str, str]] = []
        for entry in self.manifest.files:
            staged, live = state.staging.get(entry.path), state.live.get(entry.path)
            if staged is not None and staged.size == entry.size:
                requests.append(("F", 0, self.staging, entry.path))
            elif staged is not None and 0 < staged.size < entry.size:
                requests.append(("P", staged.size, self.staging, entry.path))
            if live is not None and live.size == entry.size and state.current:
                requests.append(("F", 0, state.current, entry.path))
        hashes: dict[tuple[str, str], str] = {}
        if requests:
            self.progress.phase(self.board.name, "hashing on board")
            records = b"".join(f"{kind}\0{size}\0{where}\0{path}\0".encode() for kind, size, where, path in requests)
            out = session.run("hashing files on the board", HASH, [self.dest], records,
                              nbytes=2 * self.manifest.total_bytes)
            for line in out.splitlines():
                digest, _, rest = line.partition(" ")
                where, _, path = rest.partition(" ")
                hashes[(where, path)] = digest
        for entry in self.manifest.files:
            staged = state.staging.get(entry.path)
            if hashes.get((self.staging, entry.path)) == entry.sha256 and staged and staged.size == entry.size:
                plan.keep.append(entry)
            elif state.current and hashes.get((state.current, entry.path)) == entry.sha256:
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

    def transfer(self, session: Session, plan: Plan, live: str) -> None:
        """Clear and hard-link in the staging folder, then one tar stream of whole files, then resumes."""
        self.result.files_linked = len(plan.link)
        self.progress.phase(self.board.name, "sending")
        sending = sum(e.size for e in plan.send) + sum(e.size for e in plan.link)
        session.stream("sending files", RECEIVE_TAR,
                       [self.dest, self.staging, path_list(plan.send).decode(), path_list(plan.link).decode(), live,
                        "send" if plan.send else "prepare"],
                       lambda fd: self.write_tar(fd, plan.send), nbytes=sending)
        self.result.files_sent = len(plan.send)
        for entry, offset in plan.resume:
            self.progress.phase(self.board.name, f"resuming {entry.path}")
            session.stream(f"resuming {entry.path}", RESUME, [self.dest, self.staging, entry.path],
                           partial(send_file, path=self.local(entry), offset=offset, size=entry.size,
                                   advance=self.advance), nbytes=entry.size - offset)
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
        """The board hashes what it wrote, read back from disk; only a clean check flips `current`."""
        files = self.manifest.files
        self.progress.phase(self.board.name, "verifying on board")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() // 1000 % 1000000:06d}Z"
        release = f"releases/{release_prefix(self.manifest)}-{stamp}"
        links = "".join(f"{link.target}\n{link.path}\n" for link in self.manifest.links)
        groups: dict[int, list[str]] = {}
        for entry in files:
            groups.setdefault(entry.mode, []).append(entry.path)
        modes = [f"{mode:o}\n" + "".join(f"{p}\n" for p in paths) for mode, paths in groups.items()]
        sums = "".join(sorted(f"{e.sha256} *./{e.path}\n" for e in files)).encode()
        out = session.run("verifying and switching the release", VERIFY_AND_FLIP,
                          [self.dest, self.staging, release, path_list(files).decode(), links, *modes],
                          sums, nbytes=self.manifest.total_bytes, allowed=(0, 72))
        if "@mismatch" in out:
            bad = [line.rsplit(": ", 1)[0][2:] for line in out.splitlines() if ": FAILED" in line]
            raise BoardError(f"{self.board.name}: {len(bad)} file(s) differ on the board after sending "
                             f"({', '.join(bad[:3])}); push again to re-send them")
        for line in out.splitlines():
            word, _, rest = line.partition(" ")
            if word == "@previous":
                self.result.previous = rest
            elif word == "@hash":
                self.result.verify_tool = rest
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


#: Called with each board's result as soon as that board is done (from a worker thread).
Report = Callable[[BoardResult], None]


def run_fleet(jobs: Sequence[Callable[[], BoardResult]], parallel: int, report: Report | None) -> list[BoardResult]:
    """Run one job per board, at most ``parallel`` at once; report each result as it lands, return them in order."""
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(job): index for index, job in enumerate(jobs)}
        results: dict[int, BoardResult] = {}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if report:
                report(results[futures[future]])
    return [results[index] for index in range(len(jobs))]


def push_fleet(bundle: Path, boards: Sequence[Board], dest: str = DEFAULT_DEST, parallel: int = 8,
               progress: PushProgress | None = None, checksum: bool = False, timeout: float = 60,
               cancel: Cancel | None = None, report: Report | None = None) -> list[BoardResult]:
    """Verify the bundle locally, then push it to every board, at most ``parallel`` at a time.

    A board that fails, hangs past ``timeout`` or is interrupted reports why and never stops the others.
    """
    manifest = verified_manifest(bundle)
    cancel = cancel or Cancel()
    jobs = [BoardPush(board, bundle, manifest, dest, progress, checksum, timeout, cancel).run for board in boards]
    return run_fleet(jobs, parallel, report)


def rollback_board(board: Board, dest: str = DEFAULT_DEST, timeout: float = 60,
                   cancel: Cancel | None = None) -> BoardResult:
    """Swap current and previous on one board (under the push lock); only ever to a folder under DEST/releases."""
    result = BoardResult(board.name, "failed")
    started = time.monotonic()
    try:
        with Session(board, timeout, cancel) as session, BoardLock(session, board.path(dest)):
            out = session.run("rolling back", ROLLBACK, [board.path(dest)])
            if "@noprevious" in out:
                raise BoardError(f"{board.name}: no previous deployment under {dest} to roll back to")
            result.status = "rolled-back"
            result.release = out.split("@current ", 1)[1].strip()
    except Interrupted as exc:
        result.status, result.message = "interrupted", str(exc)
    except BoardError as exc:
        result.message = str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        result.message = f"{board.name}: {exc}"
    result.seconds = round(time.monotonic() - started, 3)
    return result


def rollback_fleet(boards: Sequence[Board], dest: str = DEFAULT_DEST, parallel: int = 8, timeout: float = 60,
                   cancel: Cancel | None = None, report: Report | None = None) -> list[BoardResult]:
    cancel = cancel or Cancel()
    return run_fleet([partial(rollback_board, board, dest, timeout, cancel) for board in boards], parallel, report)

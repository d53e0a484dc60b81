"""Which machines to work on: Ansible-style inventories, `--hosts`, and ~/.ssh/config.

Users already describe their boards for Ansible, so llmtpu reads the same files:

* INI: ``[group]`` sections of host lines ``name key=value ...``, ``[group:vars]``,
  ``[group:children]``, hosts before any section (group ``ungrouped``), ranges such as
  ``airbox-[01:08]``, ``host:port``.
* YAML, the subset Ansible inventories use: nested mappings of ``hosts``/``vars``/``children``
  with scalar values (plain, quoted, or a one-line ``{k: v}``). Lists, anchors, tags and
  block scalars are refused with the line number (PyYAML is not a dependency).

Per-host variables: ``ansible_host``, ``ansible_port``, ``ansible_user``,
``ansible_ssh_private_key_file``, ``ansible_python_interpreter`` (the remote python that reads
a machine's files in one command), and llmtpu's own ``root`` (the machine's files live under
this folder on the remote side, for sysroots and chroots) and ``arch``. Passwords in an
inventory are never used (``ansible_password`` and friends are reported and ignored):
llmtpu takes passwords only from a prompt or the environment.

Each host is then looked up in the OpenSSH client config (``~/.ssh/config``): ``HostName``,
``User``, ``Port``, ``IdentityFile`` and ``ProxyJump`` fill what the inventory leaves open.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import re
import shlex
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

#: Inventory variables that would carry a secret; llmtpu never reads them.
SECRET_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password", "ansible_become_pass",
               "ansible_become_password", "ansible_sudo_pass")
#: How many ProxyJump hops are followed before giving up (a loop in ~/.ssh/config).
MAX_JUMPS = 8


class InventoryError(ValueError):
    """A malformed inventory, host list or pattern; the message names the file and line."""


@dataclass(frozen=True)
class HostSpec:
    """Everything needed to reach one machine and read it."""

    name: str  # as the user calls it: inventory name, --hosts entry or ssh alias
    hostname: str  # what to connect to
    port: int = 22
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    jump: tuple[HostSpec, ...] = ()  # ProxyJump hops, the first one connected first
    root: str = "/"
    groups: tuple[str, ...] = ()
    vars: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    proxy_command: str | None = None  # from ssh_config; refused at connect time

    @property
    def login(self) -> str:
        return self.user or getpass.getuser()

    @property
    def address(self) -> str:
        """user@host:port, for tables and messages."""
        return f"{self.login}@{self.hostname}:{self.port}"


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)


@dataclass
class Inventory:
    """Hosts with their own vars, and groups; ``all`` and ``ungrouped`` always exist."""

    source: str = "<inventory>"
    hosts: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def group(self, name: str) -> Group:
        if name not in self.groups:
            self.groups[name] = Group(name)
        return self.groups[name]

    def add_host(self, name: str, host_vars: Mapping[str, str], group: str | None) -> None:
        self.hosts.setdefault(name, {}).update(host_vars)
        if group is not None:
            members = self.group(group).hosts
            if name not in members:
                members.append(name)

    # -- membership and variables ---------------------------------------------------------

    def _finish(self) -> None:
        """Make ``all`` and ``ungrouped`` explicit and refuse child-group loops."""
        self.group("all")
        self.group("ungrouped")
        for name in self.groups:
            self._depths(name, ())
        grouped = {h for g in self.groups.values() if g.name not in ("all", "ungrouped") for h in g.hosts}
        for host in self.hosts:
            if host not in grouped and host not in self.groups["ungrouped"].hosts:
                self.groups["ungrouped"].hosts.append(host)

    def _depths(self, name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise InventoryError(f"{self.source}: group loop {' -> '.join((*path, name))}")
        for child in self.groups.get(name, Group(name)).children:
            self._depths(child, (*path, name))

    def members(self, group: str) -> list[str]:
        """Hosts of a group and of its child groups, in inventory order."""
        if group == "all":
            return list(self.hosts)
        seen: list[str] = []
        stack = [group]
        visited = set()
        while stack:
            name = stack.pop(0)
            if name in visited or name not in self.groups:
                continue
            visited.add(name)
            seen.extend(h for h in self.groups[name].hosts if h not in seen)
            stack.extend(self.groups[name].children)
        return [h for h in self.hosts if h in seen]

    def groups_of(self, host: str) -> list[str]:
        """Groups the host belongs to (directly or through a child group), shallowest first."""
        names = [g for g in self.groups if g != "all" and host in self.members(g)]
        return sorted(names, key=lambda g: (self._depth(g), g))

    def _depth(self, group: str) -> int:
        parents = [g.name for g in self.groups.values() if group in g.children]
        return 1 + max((self._depth(p) for p in parents), default=0)

    def host_vars(self, host: str) -> dict[str, str]:
        """Ansible precedence: ``all`` < parent groups < child groups < the host's own vars."""
        merged = dict(self.groups["all"].vars) if "all" in self.groups else {}
        for group in self.groups_of(host):
            merged.update(self.groups[group].vars)
        merged.update(self.hosts.get(host, {}))
        return merged

    # -- selection (--limit) --------------------------------------------------------------

    def select(self, pattern: str) -> list[str]:
        """Hosts matching an Ansible host pattern: ``a,b``, ``grp*``, ``~regex``, ``!x``, ``&y``."""
        terms = [t.strip() for t in re.split(r"," if "," in pattern else r":", pattern) if t.strip()]
        if not terms:
            raise InventoryError(f"--limit: empty pattern {pattern!r}")
        chosen: list[str] = []
        intersect: list[set[str]] = []
        exclude: set[str] = set()
        for term in terms:
            if term.startswith("!"):
                exclude |= set(self._match(term[1:]))
            elif term.startswith("&"):
                intersect.append(set(self._match(term[1:])))
            else:
                chosen.extend(h for h in self._match(term) if h not in chosen)
        if not chosen and (intersect or exclude):
            chosen = list(self.hosts)
        for subset in intersect:
            chosen = [h for h in chosen if h in subset]
        return [h for h in self.hosts if h in chosen and h not in exclude]  # inventory order

    def _match(self, term: str) -> list[str]:
        if term in ("all", "*"):
            return list(self.hosts)
        if term.startswith("~"):
            try:
                regex = re.compile(term[1:])
            except re.error as exc:
                raise InventoryError(f"--limit: bad regular expression {term!r}: {exc}") from exc
            groups = [g for g in self.groups if regex.search(g)]
            hosts = [h for h in self.hosts if regex.search(h)]
        else:
            groups = [g for g in self.groups if fnmatch.fnmatchcase(g, term)]
            hosts = [h for h in self.hosts if fnmatch.fnmatchcase(h, term)]
        found = [h for g in groups for h in self.members(g)] + hosts
        return [h for h in self.hosts if h in found]


# ---------------------------------------------------------------------------------------
# Host names with ranges: airbox-[01:08], rack[a:c]

_RANGE = re.compile(r"\[([^\[\]:]+):([^\[\]:]+)(?::(\d+))?\]")


def expand_host_pattern(pattern: str, where: str) -> list[str]:
    """``web[01:03]`` -> web01, web02, web03 (leading zeros kept); ``[a:c]`` for letters."""
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    start, end, stride = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = pattern[:match.start()], pattern[match.end():]
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        if int(start) > int(end) or stride < 1:
            raise InventoryError(f"{where}: empty host range {match.group(0)!r}")
        values = [str(i).zfill(width) for i in range(int(start), int(end) + 1, stride)]
    elif len(start) == len(end) == 1 and start in string.ascii_letters and end in string.ascii_letters:
        values = [chr(c) for c in range(ord(start), ord(end) + 1, stride)]
        if not values:
            raise InventoryError(f"{where}: empty host range {match.group(0)!r}")
    else:
        raise InventoryError(f"{where}: bad host range {match.group(0)!r}; use [01:08] or [a:f]")
    return [name for value in values for name in expand_host_pattern(head + value + tail, where)]


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host:2222`` -> (host, 2222); ``[::1]:22`` for IPv6; ranges like ``b[01:08]`` are not ports."""
    depth, colons = 0, []
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == ":" and depth == 0:
            colons.append(i)
    host, port = text, None
    if len(colons) == 1:
        host, port_text = text[:colons[0]], text[colons[0] + 1:]
        if not port_text.isdigit():
            raise InventoryError(f"bad port in {text!r}")
        port = int(port_text)
    if host.startswith("[") and host.endswith("]") and host.count(":") >= 2:
        host = host[1:-1]  # an IPv6 literal
    return host, port


# ---------------------------------------------------------------------------------------
# INI

def parse_ini(text: str, source: str = "<inventory>") -> Inventory:
    inv = Inventory(source=source)
    section, kind = None, "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{number}"
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            match = re.fullmatch(r"\[([^\[\]:\s]+)(?::(vars|children))?\]", line)
            if not match:
                raise InventoryError(f"{where}: bad section header {line!r}; use [group], [group:vars] "
                                     "or [group:children]")
            section, kind = match.group(1), match.group(2) or "hosts"
            inv.group(section)
            continue
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq or not key.strip():
                raise InventoryError(f"{where}: expected key=value in [{section}:vars], got {line!r}")
            inv.group(section or "all").vars[key.strip()] = _unquote(value.strip(), where)
            continue
        if kind == "children":
            inv.group(section or "all").children.append(line.split()[0])
            inv.group(line.split()[0])
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"{where}: {exc}: {line!r}") from exc
        if not tokens:
            continue
        host_vars: dict[str, str] = {}
        for token in tokens[1:]:
            key, eq, value = token.partition("=")
            if not eq or not key:
                raise InventoryError(f"{where}: expected key=value after the host name, got {token!r}")
            host_vars[key] = value
        _add_hosts(inv, tokens[0], host_vars, section, where)
    inv._finish()
    _note_secrets(inv)
    return inv


def _unquote(value: str, where: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise InventoryError(f"{where}: {exc}: {value!r}") from exc
        return parts[0] if parts else ""
    return value


def _add_hosts(inv: Inventory, pattern: str, host_vars: Mapping[str, Any], group: str | None, where: str) -> None:
    name_part, port = split_host_port(pattern)
    values = {k: "" if v is None else str(v) for k, v in host_vars.items()}
    if port is not None:
        values.setdefault("ansible_port", str(port))
    for name in expand_host_pattern(name_part, where):
        inv.add_host(name, values, group)


def _note_secrets(inv: Inventory) -> None:
    holders = [(h, v) for h, hv in inv.hosts.items() for v in hv if v in SECRET_VARS]
    holders += [(f"group {g.name}", v) for g in inv.groups.values() for v in g.vars if v in SECRET_VARS]
    for holder, var in holders:
        inv.warnings.append(f"{inv.source}: {holder}: {var} ignored; llmtpu takes passwords only from "
                            "LLMTPU_SSH_PASSWORD or --ask-pass")


# ---------------------------------------------------------------------------------------
# YAML: the subset Ansible inventories use

@dataclass(frozen=True)
class _Line:
    number: int
    indent: int
    text: str


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _yaml_lines(text: str, source: str) -> list[_Line]:
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        body = _strip_comment(raw)
        if not body.strip() or body.strip() in ("---", "..."):
            continue
        stripped = body.lstrip(" ")
        if stripped.startswith("\t") or "\t" in body[: len(body) - len(stripped)]:
            raise InventoryError(f"{source}:{number}: tabs are not allowed for indentation in YAML")
        lines.append(_Line(number, len(body) - len(stripped), stripped))
    return lines


def _yaml_scalar(text: str, where: str) -> str | None:
    text = text.strip()
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text[0] in "&*!|>%@`":
        raise InventoryError(f"{where}: {text!r}: anchors, aliases, tags and block scalars are outside "
                             "the YAML subset llmtpu reads")
    if text[0] == "'":
        if len(text) < 2 or text[-1] != "'":
            raise InventoryError(f"{where}: unterminated quoted string {text!r}")
        return text[1:-1].replace("''", "'")
    if text[0] == '"':
        if len(text) < 2 or text[-1] != '"':
            raise InventoryError(f"{where}: unterminated quoted string {text!r}")
        body = text[1:-1]
        escapes = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "/": "/"}
        out, i = [], 0
        while i < len(body):
            if body[i] == "\\":
                if i + 1 >= len(body) or body[i + 1] not in escapes:
                    raise InventoryError(f"{where}: unsupported escape in {text!r}")
                out.append(escapes[body[i + 1]])
                i += 2
            else:
                out.append(body[i])
                i += 1
        return "".join(out)
    if text[0] in "[-":
        raise InventoryError(f"{where}: {text!r}: lists are outside the YAML subset llmtpu reads")
    return text


def _split_key(text: str, where: str) -> tuple[str, str]:
    """``key: rest`` with a plain or quoted key."""
    if text[0] in "'\"":
        end = text.find(text[0], 1)
        if end < 0 or text[end + 1:end + 2] != ":":
            raise InventoryError(f"{where}: expected 'key: value', got {text!r}")
        return text[1:end], text[end + 2:]
    match = re.match(r"(\S.*?)\s*:(?:\s+|$)(.*)$", text)
    if not match:
        raise InventoryError(f"{where}: expected 'key: value', got {text!r}")
    return match.group(1), match.group(2)


def _yaml_flow_map(text: str, where: str) -> dict[str, Any]:
    body = text.strip()[1:-1].strip()
    result: dict[str, Any] = {}
    if not body:
        return result
    if any(c in body for c in "{}[]"):
        raise InventoryError(f"{where}: nested flow collections are outside the YAML subset llmtpu reads")
    parts, quote, current = [], None, ""
    for ch in body:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    for part in parts:
        if not part.strip():
            continue
        key, value = _split_key(part.strip(), where)
        result[key] = _yaml_scalar(value, where)
    return result


def _yaml_block(lines: list[_Line], i: int, indent: int, source: str) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while i < len(lines):
        line = lines[i]
        where = f"{source}:{line.number}"
        if line.indent < indent:
            break
        if line.indent > indent:
            raise InventoryError(f"{where}: unexpected indentation")
        if line.text.startswith("- ") or line.text == "-":
            raise InventoryError(f"{where}: lists are outside the YAML subset llmtpu reads")
        key, rest = _split_key(line.text, where)
        if key in result:
            raise InventoryError(f"{where}: duplicate key {key!r}")
        rest = rest.strip()
        value: Any
        if rest == "" and i + 1 < len(lines) and lines[i + 1].indent > indent:
            value, i = _yaml_block(lines, i + 1, lines[i + 1].indent, source)
        elif rest.startswith("{"):
            if not rest.endswith("}"):
                raise InventoryError(f"{where}: a {{...}} mapping must close on the same line")
            value, i = _yaml_flow_map(rest, where), i + 1
        else:
            value, i = _yaml_scalar(rest, where), i + 1
        result[key] = value
    return result, i


def parse_yaml_subset(text: str, source: str = "<yaml>") -> dict[str, Any]:
    """Nested mappings of scalars; anything else is refused with its line number."""
    lines = _yaml_lines(text, source)
    if not lines:
        return {}
    if lines[0].indent != 0:
        raise InventoryError(f"{source}:{lines[0].number}: the document must start at column 0")
    data, end = _yaml_block(lines, 0, 0, source)
    if end != len(lines):
        raise InventoryError(f"{source}:{lines[end].number}: unexpected indentation")
    return data


def parse_yaml(text: str, source: str = "<inventory>") -> Inventory:
    inv = Inventory(source=source)
    data = parse_yaml_subset(text, source)
    for name, body in data.items():
        _yaml_group(inv, name, body, None)
    inv._finish()
    _note_secrets(inv)
    return inv


def _yaml_group(inv: Inventory, name: str, body: Any, parent: str | None) -> None:
    group = inv.group(name)
    if parent is not None and name not in inv.group(parent).children:
        inv.group(parent).children.append(name)
    if body is None:
        return
    if not isinstance(body, dict):
        raise InventoryError(f"{inv.source}: group {name!r} must be a mapping of hosts/vars/children")
    unknown = set(body) - {"hosts", "vars", "children"}
    if unknown:
        raise InventoryError(f"{inv.source}: group {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                             "a group holds hosts, vars and children")
    for host, host_vars in (body.get("hosts") or {}).items():
        if host_vars is not None and not isinstance(host_vars, dict):
            raise InventoryError(f"{inv.source}: host {host!r} must map to its vars (or nothing)")
        _add_hosts(inv, host, host_vars or {}, name, inv.source)
    group_vars = body.get("vars") or {}
    if not isinstance(group_vars, dict):
        raise InventoryError(f"{inv.source}: vars of group {name!r} must be a mapping")
    group.vars.update({k: "" if v is None else str(v) for k, v in group_vars.items()})
    children = body.get("children") or {}
    if not isinstance(children, dict):
        raise InventoryError(f"{inv.source}: children of group {name!r} must be a mapping")
    for child, child_body in children.items():
        _yaml_group(inv, child, child_body, name)


def load_inventory(path: str | Path) -> Inventory:
    """Read an inventory file: YAML when it ends in .yml/.yaml or starts like YAML, else INI."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"--inventory: cannot read {path}: {exc.strerror or exc}") from exc
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    is_yaml = path.suffix in (".yml", ".yaml") or first == "---" or bool(re.fullmatch(r"[\w.-]+:", first))
    return parse_yaml(text, str(path)) if is_yaml else parse_ini(text, str(path))


def adhoc_inventory(hosts: str) -> Inventory:
    """``--hosts a,root@b:2222,c``: hosts without a file, group ``ungrouped``."""
    inv = Inventory(source="--hosts")
    for item in (h.strip() for h in hosts.split(",")):
        if not item:
            continue
        user, at, rest = item.rpartition("@")
        host, port = split_host_port(rest)
        if not host:
            raise InventoryError(f"--hosts: empty host name in {item!r}")
        values = {}
        if at:
            values["ansible_user"] = user
        if port is not None:
            values["ansible_port"] = str(port)
        for name in expand_host_pattern(host, "--hosts"):
            inv.add_host(name, values, None)
    if not inv.hosts:
        raise InventoryError("--hosts: no host given; write --hosts board1,board2")
    inv._finish()
    return inv


# ---------------------------------------------------------------------------------------
# From inventory entries to HostSpecs, through ~/.ssh/config

def load_ssh_config(path: str | Path | None) -> paramiko.SSHConfig:
    """The OpenSSH client config (default ~/.ssh/config); an empty one when absent."""
    if path is None:
        default = Path(os.path.expanduser("~")) / ".ssh" / "config"
        if not default.is_file():
            return paramiko.SSHConfig()
        path = default
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise InventoryError(f"ssh config {path}: {exc}") from exc


def _int(value: Any, what: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise InventoryError(f"{what}: {value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise InventoryError(f"{what}: {port} is not a port number")
    return port


def host_spec(name: str, host_vars: Mapping[str, str], ssh_config: paramiko.SSHConfig,
              groups: Sequence[str] = (), hops: int = 0) -> HostSpec:
    """Inventory vars win over ~/.ssh/config, which wins over defaults (port 22, local user)."""
    target = host_vars.get("ansible_host") or name
    config = ssh_config.lookup(target)
    hostname = config.get("hostname", target)
    port_value = host_vars.get("ansible_port") or host_vars.get("ansible_ssh_port") or config.get("port") or 22
    user = host_vars.get("ansible_user") or host_vars.get("ansible_ssh_user") or config.get("user")
    keys = host_vars.get("ansible_ssh_private_key_file")
    identity = (keys,) if keys else tuple(config.get("identityfile", ()))
    jump: tuple[HostSpec, ...] = ()
    jump_text = host_vars.get("llmtpu_proxy_jump") or config.get("proxyjump")
    if jump_text and jump_text.lower() != "none":
        if hops >= MAX_JUMPS:
            raise InventoryError(f"ProxyJump for {name}: more than {MAX_JUMPS} hops (a loop in ~/.ssh/config?)")
        jump = tuple(_jump_hop(h.strip(), ssh_config, hops) for h in jump_text.split(","))
        jump = tuple(hop for chain in jump for hop in (*chain.jump, _without_jump(chain)))
    root = host_vars.get("llmtpu_root") or host_vars.get("root") or "/"
    if not root.startswith("/"):
        raise InventoryError(f"host {name}: root={root!r} must be an absolute path on that machine")
    return HostSpec(
        name=name, hostname=hostname, port=_int(port_value, f"port of {name}"), user=user or None,
        identity_files=tuple(os.path.expanduser(k) for k in identity), jump=jump, root=root,
        groups=tuple(groups), vars=dict(host_vars),
        proxy_command=config.get("proxycommand") if not jump else None,
    )


def _jump_hop(text: str, ssh_config: paramiko.SSHConfig, hops: int) -> HostSpec:
    user, at, rest = text.rpartition("@")
    host, port = split_host_port(rest)
    values = {}
    if at:
        values["ansible_user"] = user
    if port is not None:
        values["ansible_port"] = str(port)
    return host_spec(host, values, ssh_config, hops=hops + 1)


def _without_jump(spec: HostSpec) -> HostSpec:
    return HostSpec(spec.name, spec.hostname, spec.port, spec.user, spec.identity_files, (), spec.root,
                    spec.groups, spec.vars, spec.proxy_command)


def resolve_hosts(inventory: Inventory | None, hosts: str | None, limit: str | None,
                  ssh_config: paramiko.SSHConfig) -> list[HostSpec]:
    """The hosts to work on: the inventory's and/or --hosts (names found in the inventory keep
    their vars), narrowed by --limit, each completed from ~/.ssh/config."""
    if inventory is None and not hosts:
        raise InventoryError("give the machines with --inventory FILE or --hosts a,b,c")
    merged = Inventory(source=inventory.source if inventory else "--hosts")
    if inventory is not None:
        merged = inventory
    names = list(merged.hosts)
    if hosts:
        adhoc = adhoc_inventory(hosts)
        names = []
        for name, values in adhoc.hosts.items():
            if name not in merged.hosts:
                merged.add_host(name, values, "ungrouped")
            else:
                merged.hosts[name].update(values)
            names.append(name)
        merged._finish()
    if limit:
        allowed = set(merged.select(limit))
        names = [n for n in names if n in allowed]
        if not names:
            raise InventoryError(f"--limit {limit!r} matches no host; `llmtpu hosts list` shows them")
    return [host_spec(n, merged.host_vars(n), ssh_config, merged.groups_of(n)) for n in names]


def describe(specs: Iterable[HostSpec]) -> list[dict[str, Any]]:
    """Plain data for `llmtpu hosts list --json` and the fleet JSON."""
    return [{
        "name": s.name, "hostname": s.hostname, "port": s.port, "user": s.login, "root": s.root,
        "groups": list(s.groups), "arch": s.vars.get("arch"),
        "jump": [f"{h.login}@{h.hostname}:{h.port}" for h in s.jump],
    } for s in specs]

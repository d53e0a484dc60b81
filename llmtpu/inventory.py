"""Which machines to work on: Ansible inventories, `--hosts`, and ~/.ssh/config.

Users already describe their boards for Ansible, so llmtpu reads the same files the way
ansible-core's own inventory plugins read them (a differential test runs `ansible-inventory`):

* INI: ``[group]`` sections of host lines ``name key=value ...`` (values read as Python literals
  as Ansible does), ``[group:vars]``, ``[group:children]``, hosts before any section (group
  ``ungrouped``), ranges such as ``airbox-[01:08]``, ``host:port``, ``#`` comments.
* YAML through PyYAML's safe loader: groups of ``hosts``/``vars``/``children`` mappings; lists,
  block scalars and anchors are plain data. ``!vault`` values are refused (no decryption here).
* JSON as ``ansible-inventory --list`` prints it (``-i inv.json``, or ``-i -`` from a pipe), so
  dynamic inventories and inventory plugins work through Ansible itself.

Per-host variables: ``ansible_host``, ``ansible_port``, ``ansible_user``,
``ansible_ssh_private_key_file``, ``ansible_python_interpreter`` (the remote python that reads
a machine's files in one command), and llmtpu's own ``root`` (the machine's files live under
this folder on the remote side, for sysroots and chroots) and ``arch``. Passwords in an
inventory are never used (``ansible_password`` and friends are reported and ignored):
llmtpu takes passwords only from a prompt or the environment. A value that would reach ssh as
an option (``ansible_host=-oProxyCommand=...``) is refused, naming the host and variable.

Each host is then looked up in the OpenSSH client config (``~/.ssh/config``): ``HostName``,
``User``, ``Port``, ``IdentityFile`` and ``ProxyJump`` fill what the inventory leaves open.
"""

from __future__ import annotations

import ast
import fnmatch
import getpass
import json
import os
import re
import shlex
import string
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import paramiko
import yaml

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
    priority: int = 1  # ansible_group_priority: orders groups of one depth; not a variable

    def set_vars(self, values: Mapping[str, str], where: str) -> None:
        for key, value in values.items():
            if key != "ansible_group_priority":
                self.vars[key] = value
                continue
            try:
                self.priority = int(value)
            except ValueError:
                raise InventoryError(f"{where}: group {self.name}: ansible_group_priority={value!r} "
                                     "is not a whole number") from None


@dataclass
class Inventory:
    """Hosts with their own vars, and groups; ``all`` and ``ungrouped`` always exist."""

    source: str = "<inventory>"
    hosts: dict[str, dict[str, str]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    #: membership worked out once per change (fleets of thousands of hosts in many groups)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def group(self, name: str) -> Group:
        if name not in self.groups:
            self.groups[name] = Group(name)
            self._cache.clear()
        return self.groups[name]

    def add_host(self, name: str, host_vars: Mapping[str, str], group: str | None) -> None:
        self.hosts.setdefault(name, {}).update(host_vars)
        if group is not None:
            members = self.group(group).hosts
            if name not in members:
                members.append(name)
        self._cache.clear()

    # -- membership and variables ---------------------------------------------------------

    def _finish(self) -> None:
        """Make ``all`` and ``ungrouped`` explicit and refuse child-group loops. As Ansible does,
        ``ungrouped`` holds exactly the hosts of no other group."""
        self.group("all")
        self.group("ungrouped")
        self._cache.clear()
        self._refuse_loops()
        grouped = {h for g in self.groups.values() if g.name not in ("all", "ungrouped") for h in g.hosts}
        self.groups["ungrouped"].hosts = [h for h in self.hosts if h not in grouped]
        self._cache.clear()

    def _refuse_loops(self) -> None:
        """Depth-first with colours: linear in groups and links, whatever the shape."""
        state: dict[str, int] = {}  # 1 on the current path, 2 done

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            path.append(name)
            for child in self.groups[name].children if name in self.groups else ():
                if state.get(child) == 1:
                    loop = path[path.index(child):] + [child]
                    raise InventoryError(f"{self.source}: group loop {' -> '.join(loop)}")
                if child not in state:
                    visit(child, path)
            path.pop()
            state[name] = 2

        for name in list(self.groups):
            if name not in state:
                visit(name, [])

    def _member_sets(self) -> dict[str, set[str]]:
        if "members" not in self._cache:
            sets: dict[str, set[str]] = {}

            def collect(name: str) -> set[str]:
                if name not in sets:
                    sets[name] = set()  # a guard while visiting; loops are refused in _finish
                    group = self.groups.get(name)
                    found = set(group.hosts) if group else set()
                    for child in group.children if group else ():
                        found |= collect(child)
                    sets[name] = found
                return sets[name]

            for name in self.groups:
                collect(name)
            self._cache["members"] = sets
        members: dict[str, set[str]] = self._cache["members"]
        return members

    def members(self, group: str) -> list[str]:
        """Hosts of a group and of its child groups, in inventory order."""
        if group == "all":
            return list(self.hosts)
        found = self._member_sets().get(group, set())
        return [h for h in self.hosts if h in found]

    def groups_of(self, host: str) -> list[str]:
        """Groups the host belongs to (directly or through a child group), shallowest first."""
        if "by_host" not in self._cache:
            by_host: dict[str, list[str]] = {}
            for name, found in self._member_sets().items():
                if name != "all":
                    for member in found:
                        by_host.setdefault(member, []).append(name)
            self._cache["by_host"] = {
                h: sorted(gs, key=lambda g: (self._depth(g), self.groups[g].priority, g)) for h, gs in by_host.items()}
        return list(self._cache["by_host"].get(host, []))

    def _depth(self, group: str) -> int:
        """Ansible's group depth: top-level groups 1, a child one more than its deepest parent."""
        if "depth" not in self._cache:
            parents: dict[str, list[str]] = {}
            for g in self.groups.values():
                for child in g.children:
                    parents.setdefault(child, []).append(g.name)
            depths: dict[str, int] = {}

            def depth(name: str) -> int:
                if name not in depths:
                    depths[name] = 1  # a guard; loops are refused in _finish
                    depths[name] = 1 + max((depth(p) for p in parents.get(name, [])), default=0)
                return depths[name]

            self._cache["depth"] = depth
        result: int = self._cache["depth"](group)
        return result

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

_RANGE = re.compile(r"\[([^\[\]:]*):([^\[\]:]*)(?::(\d+))?\]")


def expand_host_pattern(pattern: str, where: str) -> list[str]:
    """``web[01:03]`` -> web01, web02, web03 (leading zeros kept); ``[a:c]`` for letters, as Ansible."""
    match = _RANGE.search(pattern)
    if match is None:
        if "[" in pattern or "]" in pattern:
            raise InventoryError(f"{where}: bad host name or range {pattern!r}; a range is [01:08] or [a:f], "
                                 "a section header [group]")
        return [pattern]
    start, end, stride = match.group(1) or "0", match.group(2), int(match.group(3) or 1)
    head, tail = pattern[:match.start()], pattern[match.end():]
    if not end or stride < 1:
        raise InventoryError(f"{where}: bad host range {match.group(0)!r}; use [01:08] or [a:f]")
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        if width and len(end) != width:
            raise InventoryError(f"{where}: host range {match.group(0)!r} needs begin and end of equal length")
        values = [str(i).zfill(width) for i in range(int(start), int(end) + 1, stride)]
    elif len(start) == len(end) == 1 and start in string.ascii_letters and end in string.ascii_letters:
        letters = string.ascii_letters
        values = list(letters[letters.index(start):letters.index(end) + 1:stride])
    else:
        raise InventoryError(f"{where}: bad host range {match.group(0)!r}; use [01:08] or [a:f]")
    if not values:  # Ansible silently makes no host of it; a typo is likelier
        raise InventoryError(f"{where}: empty host range {match.group(0)!r}")
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


def _text(value: Any) -> str:
    """A variable as llmtpu keeps it: text. Containers become JSON so nothing is lost."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _add_hosts(inv: Inventory, pattern: str, host_vars: Mapping[str, Any], group: str | None, where: str) -> None:
    """Ansible's order: a port in the pattern counts only where the host first appears; vars win."""
    name_part, port = split_host_port(pattern)
    values = {_text(k): _text(v) for k, v in host_vars.items()}
    for name in expand_host_pattern(name_part, where):
        if name not in inv.hosts and port is not None:
            inv.add_host(name, {"ansible_port": str(port)}, None)
        inv.add_host(name, values, group)


def _note_secrets(inv: Inventory) -> None:
    holders = [(h, v) for h, hv in inv.hosts.items() for v in hv if v in SECRET_VARS]
    holders += [(f"group {g.name}", v) for g in inv.groups.values() for v in g.vars if v in SECRET_VARS]
    for holder, var in holders:
        inv.warnings.append(f"{inv.source}: {holder}: {var} ignored; llmtpu takes passwords only from "
                            "LLMTPU_SSH_PASSWORD or --ask-pass")


# ---------------------------------------------------------------------------------------
# INI, read the way Ansible's ini inventory plugin reads it

_SECTION = re.compile(r"\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?")
_GROUP_NAME = re.compile(r"([^:\]\s]+)\s*(?:#.*)?")


def _ini_value(text: str) -> Any:
    """Ansible reads INI values as Python literals when they are one (``22``, ``'a b'``, ``[1]``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_ini(text: str, source: str = "<inventory>") -> Inventory:
    """Sections ``[g]``, ``[g:vars]``, ``[g:children]``; a group must be declared by ``[g]`` or
    ``[g:children]`` somewhere (Ansible refuses a ``:vars`` or child of an undeclared group)."""
    inv = Inventory(source=source)
    inv.group("all")
    inv.group("ungrouped")
    group, kind = "ungrouped", "hosts"
    pending: dict[str, tuple[str, int, list[str]]] = {}  # group -> (why, line, parents waiting for it)
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{number}"
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        header = _SECTION.fullmatch(line)
        if header:
            group, kind = header.group(1), header.group(2) or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise InventoryError(f"{where}: section [{group}:{kind}] has unknown type {kind!r}; use "
                                     "[group], [group:vars] or [group:children]")
            if group not in inv.groups and kind == "vars" and group not in pending:
                pending[group] = ("vars", number, [])
            inv.group(group)
            if group in pending and kind != "vars":
                why, _, parents = pending.pop(group)
                for parent in parents:
                    inv.group(parent).children.append(group)
            continue
        if line.startswith("[") and line.endswith("]"):
            raise InventoryError(f"{where}: bad section header {line!r}; use [group], [group:vars] "
                                 "or [group:children] without spaces")
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq:
                raise InventoryError(f"{where}: expected key=value in [{group}:vars], got {line!r}")
            inv.group(group).set_vars({key.strip(): _text(_ini_value(value.strip()))}, where)
        elif kind == "children":
            match = _GROUP_NAME.fullmatch(line)
            if not match:
                raise InventoryError(f"{where}: {line!r} is not a group name")
            child = match.group(1)
            if child in inv.groups:
                if child not in inv.group(group).children:
                    inv.group(group).children.append(child)
            elif child in pending:
                pending[child][2].append(group)
            else:
                pending[child] = ("children", number, [group])
        else:
            _ini_host_line(inv, line, group, where)
    for name, (why, number, parents) in pending.items():
        if why == "vars":
            raise InventoryError(f"{source}:{number}: [{name}:vars] is for a group declared nowhere; "
                                 f"add a [{name}] or [{name}:children] section")
        raise InventoryError(f"{source}:{number}: [{parents[-1]}:children] names group {name!r}, declared "
                             f"nowhere; add a [{name}] section")
    inv._finish()
    _note_secrets(inv)
    return inv


def _ini_host_line(inv: Inventory, line: str, group: str, where: str) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise InventoryError(f"{where}: {exc}: {line!r}") from exc
    if not tokens:
        return
    if tokens[0].endswith(":"):
        raise InventoryError(f"{where}: host {tokens[0]!r} ends in ':'; give the port after it or drop it")
    host_vars: dict[str, Any] = {}
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if not eq:
            raise InventoryError(f"{where}: expected key=value after the host name, got {token!r}")
        host_vars[key] = _ini_value(value)
    _add_hosts(inv, tokens[0], host_vars, group, where)


# ---------------------------------------------------------------------------------------
# YAML, read with PyYAML's safe loader the way Ansible's yaml inventory plugin reads it

class _InventoryLoader(yaml.SafeLoader):
    """The safe loader plus Ansible's ``!unsafe`` (a plain string here); ``!vault`` is refused."""


def _unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    raise yaml.constructor.ConstructorError(None, None, "!unsafe on a non-scalar", node.start_mark)


def _vault(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, "a !vault value: llmtpu does not decrypt vaults; give it `ansible-inventory --list "
        "--vault-password-file F | llmtpu ... -i -` or keep secrets out of the inventory", node.start_mark)


_InventoryLoader.add_constructor("!unsafe", _unsafe)
_InventoryLoader.add_constructor("!vault", _vault)

#: Group and host visits a YAML inventory may cost (aliases can make a small file huge).
MAX_YAML_WORK = 1_000_000


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_InventoryLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(f"{source}{line}: not valid YAML: {problem}") from None
    except RecursionError:
        raise InventoryError(f"{source}: YAML nested too deeply") from None


def parse_yaml(text: str, source: str = "<inventory>") -> Inventory:
    data = _load_yaml(text, source)
    if not data:
        raise InventoryError(f"{source}: empty YAML inventory")
    return yaml_inventory(data, source)


def yaml_inventory(data: Any, source: str) -> Inventory:
    """Top-level keys are groups; each holds ``hosts``, ``vars``, ``children`` mappings."""
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: a YAML inventory is a mapping of groups, not a {type(data).__name__}")
    if "plugin" in data:
        raise InventoryError(f"{source}: an inventory plugin's config, not an inventory; give llmtpu "
                             f"`ansible-inventory -i {source} --list | llmtpu ... -i -`")
    inv = Inventory(source=source)
    inv.group("all")
    inv.group("ungrouped")
    budget = [MAX_YAML_WORK]
    for name, body in data.items():
        _yaml_group(inv, _text(name), body, None, budget)
    inv._finish()
    _note_secrets(inv)
    return inv


def _yaml_group(inv: Inventory, name: str, body: Any, parent: str | None, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise InventoryError(f"{inv.source}: more than {MAX_YAML_WORK} group and host entries "
                             "(aliases repeating groups?)")
    if body is not None and not isinstance(body, dict):
        inv.warnings.append(f"{inv.source}: {name!r} skipped: a group is a mapping of hosts/vars/children")
        return
    inv.group(name)
    if parent is not None and name not in inv.group(parent).children:
        inv.group(parent).children.append(name)
    if body is None:
        return
    for section in ("hosts", "vars", "children"):
        if isinstance(body.get(section), str):
            body = {**body, section: {body[section]: None}}
        if not isinstance(body.get(section), (dict, type(None))):
            raise InventoryError(f"{inv.source}: group {name!r}: {section} must be a mapping, "
                                 f"not a {type(body[section]).__name__}")
    for key, value in body.items():
        if key not in ("hosts", "vars", "children"):
            inv.warnings.append(f"{inv.source}: group {name!r}: key {key!r} skipped; a group holds "
                                "hosts, vars and children")
        elif value is None:
            continue
        elif key == "vars":
            inv.group(name).set_vars({_text(k): _text(v) for k, v in value.items()}, inv.source)
        elif key == "children":
            for child, child_body in value.items():
                _yaml_group(inv, _text(child), child_body, name, budget)
        else:
            for pattern, host_vars in value.items():
                budget[0] -= 1
                if not isinstance(pattern, str):
                    raise InventoryError(f"{inv.source}: group {name!r}: host {pattern!r} must be a string; "
                                         "quote numbers as Ansible asks")
                if host_vars is not None and not isinstance(host_vars, dict):
                    raise InventoryError(f"{inv.source}: host {pattern!r} must map to its vars (or nothing)")
                _add_hosts(inv, _text(pattern), host_vars or {}, name, inv.source)


# ---------------------------------------------------------------------------------------
# JSON as `ansible-inventory --list` (or a dynamic inventory script) prints it

def list_inventory(data: Mapping[str, Any], source: str) -> Inventory:
    """``{"_meta": {"hostvars": {...}}, "group": {"hosts": [...], "children": [...], "vars": {...}}}``;
    a group may also be a bare list of hosts. Host vars in ``_meta`` are already merged by Ansible."""
    inv = Inventory(source=source)
    inv.group("all")
    inv.group("ungrouped")
    meta = data.get("_meta") or {}
    hostvars = meta.get("hostvars") or {} if isinstance(meta, dict) else None
    if not isinstance(hostvars, dict):
        raise InventoryError(f"{source}: _meta.hostvars must map host names to their vars")
    for name, body in data.items():
        if name == "_meta":
            continue
        if isinstance(body, list):
            body = {"hosts": body}
        if not isinstance(body, dict):
            raise InventoryError(f"{source}: group {name!r} must be an object or a list of hosts")
        group = inv.group(_text(name))
        hosts, children, group_vars = body.get("hosts") or [], body.get("children") or [], body.get("vars") or {}
        if not (isinstance(hosts, list) and isinstance(children, list) and isinstance(group_vars, dict)):
            raise InventoryError(f"{source}: group {name!r}: hosts and children are lists, vars an object")
        for host in hosts:
            inv.add_host(_text(host), {}, group.name)
        for child in children:
            inv.group(_text(child))
            if _text(child) not in group.children:
                group.children.append(_text(child))
        group.set_vars({_text(k): _text(_plain(v)) for k, v in group_vars.items()}, source)
    for name, host_vars in hostvars.items():
        if not isinstance(host_vars, dict):
            raise InventoryError(f"{source}: _meta.hostvars[{name!r}] must be an object")
        inv.add_host(_text(name), {_text(k): _text(_plain(v)) for k, v in host_vars.items()}, None)
    inv._finish()
    _note_secrets(inv)
    return inv


def _plain(value: Any) -> Any:
    """Ansible's JSON wraps ``!unsafe`` strings as ``{"__ansible_unsafe": text}``."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _is_list_output(data: Any) -> bool:
    """Ansible's --list JSON (``_meta``, list-valued hosts/children) rather than a YAML-shaped one."""
    if not isinstance(data, dict):
        return False
    if "_meta" in data:
        return True
    return any(isinstance(b, list) or (isinstance(b, dict) and (isinstance(b.get("hosts"), list)
               or isinstance(b.get("children"), list))) for b in data.values())


# ---------------------------------------------------------------------------------------
# Reading a file or standard input

#: The largest inventory read (a bound for `-i -` from a pipe too).
MAX_INVENTORY_BYTES = 64 << 20


def parse_inventory(text: str, source: str, suffix: str = "") -> Inventory:
    """Choose the format as Ansible does: ``.ini`` and other suffixes are INI; ``.yml``, ``.yaml``,
    ``.json`` and none are YAML (JSON is YAML) when they read as a mapping, else INI. A JSON
    object shaped like `ansible-inventory --list` (``_meta``, lists of hosts) is read as that."""
    if suffix not in ("", ".yml", ".yaml", ".json"):
        return parse_ini(text, source)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InventoryError(f"{source}: not valid JSON: {exc}") from None
        return list_inventory(data, source) if _is_list_output(data) else yaml_inventory(data, source)
    try:
        data = _load_yaml(text, source)
    except InventoryError:
        if suffix:
            raise
        return parse_ini(text, source)
    if isinstance(data, dict) and data:
        return yaml_inventory(data, source)
    if suffix:
        raise InventoryError(f"{source}: a YAML inventory is a mapping of groups")
    return parse_ini(text, source)


def load_inventory(path: str | Path, stdin: IO[str] | None = None) -> Inventory:
    """Read an inventory file, or standard input for ``-``."""
    if str(path) == "-":
        text = (stdin or sys.stdin).read(MAX_INVENTORY_BYTES + 1)
        if len(text) > MAX_INVENTORY_BYTES:
            raise InventoryError(f"--inventory -: more than {MAX_INVENTORY_BYTES >> 20} MiB on standard input")
        if not text.strip():
            raise InventoryError("--inventory -: nothing on standard input; pipe `ansible-inventory --list` in")
        return parse_inventory(text, "<stdin>")
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            text = handle.read(MAX_INVENTORY_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise InventoryError(f"--inventory: cannot read {path}: {reason}") from exc
    if len(text) > MAX_INVENTORY_BYTES:
        raise InventoryError(f"--inventory: {path} is larger than {MAX_INVENTORY_BYTES >> 20} MiB")
    return parse_inventory(text, str(path), path.suffix.lower())


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


#: Where each connection value came from, for the refusal message.
_CONNECTION_VARS = ("ansible_host", "ansible_user", "ansible_ssh_user", "ansible_ssh_private_key_file",
                    "llmtpu_proxy_jump")


def refuse_option_like(name: str, what: str, value: str) -> None:
    """A host, user or key file that starts with '-' would be read by ssh as an option
    (``-oProxyCommand=...`` runs a command on this machine); control characters split argv."""
    if value.startswith("-") or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise InventoryError(f"host {name}: {what}={value!r} would reach ssh as an option or split its "
                             f"command line; fix {what} in the inventory (a host or user never starts with '-')")


def host_spec(name: str, host_vars: Mapping[str, str], ssh_config: paramiko.SSHConfig,
              groups: Sequence[str] = (), hops: int = 0) -> HostSpec:
    """Inventory vars win over ~/.ssh/config, which wins over defaults (port 22, local user)."""
    refuse_option_like(name, "the inventory name", name)
    for var in _CONNECTION_VARS:
        if var in host_vars:
            refuse_option_like(name, var, host_vars[var])
    target = host_vars.get("ansible_host") or name
    config = ssh_config.lookup(target)
    hostname = config.get("hostname", target)
    port_value = host_vars.get("ansible_port") or host_vars.get("ansible_ssh_port") or config.get("port") or 22
    user = host_vars.get("ansible_user") or host_vars.get("ansible_ssh_user") or config.get("user")
    keys = host_vars.get("ansible_ssh_private_key_file")
    identity = (keys,) if keys else tuple(config.get("identityfile", ()))
    refuse_option_like(name, "HostName (ssh config)", hostname)
    if user:
        refuse_option_like(name, "User (ssh config)", user)
    for key in identity:
        refuse_option_like(name, "IdentityFile", key)
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

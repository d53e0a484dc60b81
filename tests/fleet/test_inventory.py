"""Inventories as users write them for Ansible (INI, YAML, --list JSON), --hosts, --limit,
and ~/.ssh/config filling in what the inventory leaves open. The differential test against
real `ansible-inventory` is tests/ansible/test_inventory_differential.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import paramiko
import pytest

from llmtpu.inventory import (
    InventoryError,
    adhoc_inventory,
    expand_host_pattern,
    load_inventory,
    parse_ini,
    parse_yaml,
    resolve_hosts,
)

INI = """
# a room of boards and a rack
lonely ansible_host=192.0.2.9

[pcie]
rack1-host ansible_host=10.0.0.1 ansible_user=root arch=x86_64
rack2-host:2222 ansible_host=10.0.0.2

[soc]
airbox-[01:03] ansible_user=linaro root=/srv/sysroots/airbox   ; not a comment in shlex, a token
se7 ansible_host="10.0.1.7" root='/srv/se 7'  # inline comment

[soc:vars]
arch=aarch64
ansible_port = 22

[boards:children]
pcie
soc

[all:vars]
ansible_user=admin
"""

YAML = """
---
all:
  hosts:
    lonely:
      ansible_host: 192.0.2.9
  vars:
    ansible_user: admin
  children:
    boards:
      children:
        pcie:
          hosts:
            rack1-host: {ansible_host: 10.0.0.1, ansible_user: root, arch: x86_64}
            rack2-host:2222:
              ansible_host: 10.0.0.2
        soc:
          hosts:
            airbox-[01:03]:
              ansible_user: linaro
              root: /srv/sysroots/airbox
            se7:
              ansible_host: "10.0.1.7"   # a comment
              root: '/srv/se 7'
          vars:
            arch: aarch64
            ansible_port: 22
"""


def test_ini_groups_vars_ranges_and_precedence() -> None:
    inv = parse_ini(INI.replace("   ; not a comment in shlex, a token", ""), "inv.ini")
    assert list(inv.hosts) == ["lonely", "rack1-host", "rack2-host", "airbox-01", "airbox-02", "airbox-03", "se7"]
    assert inv.members("boards") == ["rack1-host", "rack2-host", "airbox-01", "airbox-02", "airbox-03", "se7"]
    assert inv.members("ungrouped") == ["lonely"]
    assert inv.host_vars("rack1-host")["ansible_user"] == "root"  # host beats all:vars
    assert inv.host_vars("rack2-host") == {"ansible_user": "admin", "ansible_host": "10.0.0.2", "ansible_port": "2222"}
    assert inv.host_vars("se7")["root"] == "/srv/se 7" and inv.host_vars("se7")["ansible_host"] == "10.0.1.7"
    assert inv.host_vars("airbox-02")["arch"] == "aarch64"
    assert inv.groups_of("airbox-01") == ["boards", "soc"]


def test_yaml_subset_gives_the_same_inventory_as_ini() -> None:
    ini = parse_ini(INI.replace("   ; not a comment in shlex, a token", ""), "inv.ini")
    yaml = parse_yaml(YAML, "inv.yml")
    assert list(yaml.hosts) == list(ini.hosts)
    for host in ini.hosts:
        assert yaml.host_vars(host) == ini.host_vars(host), host
        assert yaml.groups_of(host) == ini.groups_of(host), host


def test_yaml_the_subset_refused_is_now_read() -> None:
    """The two inventories the issue quotes: a list var and a block scalar (issue 16, item 1)."""
    inv = parse_yaml("all:\n  vars:\n    ntp_servers: [a, b]\n    motd: |\n      hi\n      there\n"
                     "  hosts:\n    b1:\n", "inv.yml")
    assert inv.host_vars("b1") == {"ntp_servers": '["a", "b"]', "motd": "hi\nthere\n"}


@pytest.mark.parametrize("text, message", [
    ("all:\n\thosts:\n", "not valid YAML"),
    ("all:\n  hosts:\n    a:\n   b:\n", "not valid YAML"),
    ("all:\n  hosts: [a, b]\n", "hosts must be a mapping"),
    ("all:\n  vars:\n    a: 'open\n", "not valid YAML"),
    ("all:\n  vars:\n    pw: !vault |\n      $ANSIBLE_VAULT;1.1;AES256\n      3136\n", "does not decrypt"),
    ("plugin: amazon.aws.aws_ec2\n", "ansible-inventory"),
    ("all:\n  hosts:\n    a: 3\n", "must map to its vars"),
])
def test_bad_yaml_is_refused_with_the_file(text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message) as caught:
        parse_yaml(text, "inv.yml")
    assert "inv.yml" in str(caught.value)


def test_yaml_alias_bombs_are_bounded() -> None:
    levels = ["a0: &a0 {hosts: {h: }}"] + [
        f"a{i}: &a{i} {{children: {{{', '.join(f'c{i}_{j}: *a{i - 1}' for j in range(10))}}}}}" for i in range(1, 9)]
    with pytest.raises(InventoryError, match="more than"):
        parse_yaml("\n".join(levels) + "\n", "bomb.yml")


def test_unknown_group_keys_are_warned_about_like_ansible() -> None:
    inv = parse_yaml("all:\n  hostz:\n    a:\n  hosts:\n    b:\n", "inv.yml")
    assert list(inv.hosts) == ["b"] and any("hostz" in w for w in inv.warnings)


def test_ini_values_are_python_literals_like_ansible() -> None:
    inv = parse_ini("[g]\nh port_list=[1,2] n=0x10 s='a b' t=True\n[g:vars]\nmotd = hello world # not a comment\n")
    assert inv.host_vars("h") == {"port_list": "[1, 2]", "n": "16", "s": "a b", "t": "True",
                                  "motd": "hello world # not a comment"}


def test_list_json_from_a_pipe() -> None:
    listing = {"_meta": {"hostvars": {"b1": {"ansible_host": "10.0.0.1", "ansible_port": 2222, "root": "/srv/b1"}}},
               "all": {"children": ["ungrouped", "soc"]}, "soc": {"hosts": ["b1"]}}
    inv = load_inventory("-", io.StringIO(json.dumps(listing)))
    assert inv.members("soc") == ["b1"] and inv.groups_of("b1") == ["soc"]
    spec = resolve_hosts(inv, None, None, paramiko.SSHConfig())[0]
    assert (spec.hostname, spec.port, spec.root) == ("10.0.0.1", 2222, "/srv/b1")
    with pytest.raises(InventoryError, match="nothing on standard input"):
        load_inventory("-", io.StringIO(""))


@pytest.mark.parametrize("line, var", [
    ("b1 ansible_host=-oProxyCommand=touch\\ /tmp/pwned", "ansible_host"),
    ("b1 ansible_user=-oProxyCommand=x", "ansible_user"),
    ("b1 ansible_ssh_private_key_file=-oProxyCommand=x", "ansible_ssh_private_key_file"),
    ("-oProxyCommand=x", "the inventory name"),
    ("b1 \"ansible_host='10.0.0.1\\nProxyCommand x'\"", "ansible_host"),  # a Python literal: a newline
])
def test_option_like_connection_values_are_refused(line: str, var: str) -> None:
    """Issue 11 item 9: --hosts refuses a leading dash, and so does the inventory path."""
    inv = parse_ini(f"[g]\n{line}\n", "inv.ini")
    with pytest.raises(InventoryError, match=f"host .*: {var}=.* would reach ssh as an option"):
        resolve_hosts(inv, None, None, paramiko.SSHConfig())


@pytest.mark.parametrize("text, message", [
    ("[pcie\nhost\n", "section header"),
    ("[pcie] x\nhost\n", "key=value"),  # Ansible reads it as a host line too
    ("[g:vars]\nx=1\n", "declared nowhere"),
    ("[g:children]\nmissing\n", "declared nowhere"),
    ("[g:weird]\n", "unknown type"),
    ("[g]\nhost:\n", "ends in ':'"),
    ("[g]\n[g:vars]\nnovalue\n", "key=value"),
    ("[g]\nhost novalue\n", "key=value"),
    ("[a:children]\nb\n[b:children]\na\n", "loop"),
    ("[g]\nweb[05:01]\n", "empty host range"),
    ("[g]\nhost:port\n", "bad port"),
])
def test_bad_ini_is_refused(text: str, message: str) -> None:
    with pytest.raises(InventoryError, match=message):
        parse_ini(text, "inv.ini")


def test_host_ranges() -> None:
    assert expand_host_pattern("b[08:10]", "x") == ["b08", "b09", "b10"]
    assert expand_host_pattern("r[a:c]-[1:2]", "x") == ["ra-1", "ra-2", "rb-1", "rb-2", "rc-1", "rc-2"]
    assert expand_host_pattern("n[1:5:2]", "x") == ["n1", "n3", "n5"]


def test_limit_patterns() -> None:
    inv = parse_ini(INI.replace("   ; not a comment in shlex, a token", ""), "inv.ini")
    assert inv.select("soc") == ["airbox-01", "airbox-02", "airbox-03", "se7"]
    assert inv.select("airbox-0*,rack1-host") == ["rack1-host", "airbox-01", "airbox-02", "airbox-03"]
    assert inv.select("boards:!soc") == ["rack1-host", "rack2-host"]
    assert inv.select("boards,&soc,!se7") == ["airbox-01", "airbox-02", "airbox-03"]
    assert inv.select("~^rack[12]") == ["rack1-host", "rack2-host"]
    assert inv.select("all") == list(inv.hosts) and inv.select("nothing*") == []


def test_passwords_in_an_inventory_are_never_used() -> None:
    inv = parse_ini("[g]\nb1 ansible_password=hunter2\n[g:vars]\nansible_become_pass=x\n", "inv.ini")
    assert len(inv.warnings) == 2 and all("hunter2" not in w for w in inv.warnings)
    spec = resolve_hosts(inv, None, None, paramiko.SSHConfig())[0]
    assert "password" not in repr(spec).replace("ansible_password", "")


def test_adhoc_hosts() -> None:
    inv = adhoc_inventory("a, root@b:2222,c[1:2],[::1]:2200")
    assert list(inv.hosts) == ["a", "b", "c1", "c2", "::1"]
    assert inv.hosts["b"] == {"ansible_user": "root", "ansible_port": "2222"}
    assert inv.hosts["::1"] == {"ansible_port": "2200"}
    with pytest.raises(InventoryError):
        adhoc_inventory(" , ")


def test_ssh_config_fills_what_the_inventory_leaves_open(tmp_path: Path) -> None:
    config = paramiko.SSHConfig.from_text(
        "Host airbox-*\n  User linaro\n  Port 2200\n  IdentityFile ~/.ssh/boards\n  ProxyJump ops@bastion:2022\n"
        "Host bastion\n  HostName 203.0.113.5\n  User ignored-because-given\n"
        "Host rack1\n  HostName 10.0.0.1\n  ProxyJump none\n"
        "Host *\n  User default\n")
    inv = parse_ini("[soc]\nairbox-01\nairbox-02 ansible_user=root ansible_port=22\n[pcie]\nrack1\n", "inv.ini")
    specs = {s.name: s for s in resolve_hosts(inv, None, None, config)}
    first = specs["airbox-01"]
    assert (first.hostname, first.port, first.user) == ("airbox-01", 2200, "linaro")
    assert first.identity_files == (str(Path("~/.ssh/boards").expanduser()),)
    assert [(j.hostname, j.port, j.user) for j in first.jump] == [("203.0.113.5", 2022, "ops")]
    second = specs["airbox-02"]
    assert (second.port, second.user) == (22, "root")  # the inventory wins
    assert (specs["rack1"].hostname, specs["rack1"].user, specs["rack1"].jump) == ("10.0.0.1", "default", ())


def test_hosts_and_limit_together(tmp_path: Path) -> None:
    path = tmp_path / "inv.yml"
    path.write_text(YAML)
    inv = load_inventory(path)
    specs = resolve_hosts(inv, "se7,newbox:2201", None, paramiko.SSHConfig())
    assert [(s.name, s.root, s.port) for s in specs] == [("se7", "/srv/se 7", 22), ("newbox", "/", 2201)]
    specs = resolve_hosts(inv, None, "soc:!airbox-02", paramiko.SSHConfig())
    assert [s.name for s in specs] == ["airbox-01", "airbox-03", "se7"]
    with pytest.raises(InventoryError, match="matches no host"):
        resolve_hosts(inv, None, "nothing", paramiko.SSHConfig())
    with pytest.raises(InventoryError, match="must be an absolute path"):
        resolve_hosts(parse_ini("h root=relative\n"), None, None, paramiko.SSHConfig())
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(tmp_path / "missing.ini")


def test_diamond_group_graphs_are_walked_once() -> None:
    """40 levels of a -> {b, c} -> d: 2**40 paths, 121 groups; loop checks and membership are linear."""
    text = "[l0]\nh\n" + "".join(f"[a{i}:children]\nl{i}\n[b{i}:children]\nl{i}\n[l{i + 1}:children]\na{i}\nb{i}\n"
                                 for i in range(40))
    inv = parse_ini(text, "diamond.ini")
    assert len(inv.groups_of("h")) == 121 and inv.groups_of("h")[0] == "l40"
    with pytest.raises(InventoryError, match="group loop l0 -> a0 -> l0"):
        parse_ini(text + "[l0:children]\na0\n", "loop.ini")

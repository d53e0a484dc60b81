"""`llmtpu hosts`: see which machines a run would reach, and trust a machine's host key.
Also the host-selection options (--inventory, --hosts, --limit, ...) every fleet command takes.

`llmtpu hosts trust HOST` connects (without logging in), shows the key's fingerprint and
records it in llmtpu's known_hosts only after a yes: `--yes`, a matching `--fingerprint`
(compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the machine's console),
or an answer at the prompt. A key that differs from one on record is never replaced here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from llmtpu.clikit import Exit, UsageError

INVENTORY_HELP = "Ansible inventory (INI, YAML, `ansible-inventory --list` JSON; `-` reads stdin)"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("hosts", help="list the machines of an inventory; trust their SSH host keys",
                                 description=__doc__)
    sub = parser.add_subparsers(dest="hosts_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--inventory", "-i", metavar="FILE", help=INVENTORY_HELP)
        p.add_argument("--ssh-config", metavar="FILE", help="OpenSSH client config (default ~/.ssh/config)")

    listing = sub.add_parser("list", help="the hosts a run would reach, and whether their keys are known")
    common(listing)
    listing.add_argument("--hosts", metavar="A,B,C", help="comma-separated hosts ([user@]host[:port])")
    listing.add_argument("--limit", "-l", metavar="PATTERN", help="only hosts matching an Ansible pattern")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(run=run_list)

    trust = sub.add_parser("trust", help="show a host's key fingerprint and record it as trusted")
    common(trust)
    trust.add_argument("names", nargs="+", metavar="HOST", help="inventory name, ssh alias or [user@]host[:port]")
    trust.add_argument("--yes", "-y", action="store_true", help="record without asking (you compared the fingerprint)")
    trust.add_argument("--fingerprint", metavar="SHA256:...", help="record only if the key has this fingerprint")
    trust.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to connect")
    trust.set_defaults(run=run_trust)


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that works on remote machines (doctor now, more later)."""
    fleet = parser.add_argument_group("machines over SSH")
    fleet.add_argument("--inventory", "-i", metavar="FILE", help=INVENTORY_HELP)
    fleet.add_argument("--hosts", metavar="A,B,C", help="comma-separated hosts ([user@]host[:port], ssh aliases)")
    fleet.add_argument("--limit", "-l", metavar="PATTERN",
                       help="only hosts matching an Ansible pattern (group, glob, !x)")
    fleet.add_argument("--accept-new", action="store_true",
                       help="trust and record the key of a host never seen before (a changed key is still refused)")
    fleet.add_argument("--parallel", type=int, default=16, metavar="N", help="hosts worked on at once (default 16)")
    fleet.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                       help="seconds to connect and log in to a host (default 10)")
    fleet.add_argument("--timeout", type=float, default=30.0, metavar="S",
                       help="seconds a host may take once connected (default 30)")
    fleet.add_argument("--ssh-config", metavar="FILE", help="OpenSSH client config (default ~/.ssh/config)")
    fleet.add_argument("--ask-pass", action="store_true",
                       help="prompt for an SSH password or key passphrase (or set LLMTPU_SSH_PASSWORD)")


def hosts_from_args(args: argparse.Namespace) -> tuple[list[Any], Any]:
    """(host specs, SSH options) from the options add_fleet_arguments defined."""
    if args.parallel < 1:
        raise UsageError(f"--parallel: {args.parallel} must be at least 1")
    for flag, value in (("--connect-timeout", args.connect_timeout), ("--timeout", args.timeout)):
        if not value > 0:
            raise UsageError(f"{flag}: {value:g} must be more than 0 seconds")
    return resolve_specs(args, args.hosts, args.limit), ssh_options(args)


def ssh_options(args: argparse.Namespace) -> Any:
    """SSH options from --accept-new, --connect-timeout, --timeout and --ask-pass (secrets from
    the environment or a prompt, never from the command line)."""
    from llmtpu.hostkeys import HostKeyStore
    from llmtpu.ssh import SSHOptions

    password, passphrase = SSHOptions.secrets_from(os.environ, ask_pass=args.ask_pass)
    return SSHOptions(store=HostKeyStore(), accept_new=args.accept_new, connect_timeout=args.connect_timeout,
                      command_timeout=args.timeout, password=password, passphrase=passphrase)


def resolve_specs(args: argparse.Namespace, hosts: str | None, limit: str | None) -> list[Any]:
    from llmtpu.inventory import InventoryError, load_inventory, load_ssh_config, resolve_hosts

    try:
        inventory = load_inventory(args.inventory) if args.inventory else None
        specs = resolve_hosts(inventory, hosts, limit, load_ssh_config(args.ssh_config))
    except InventoryError as exc:
        raise UsageError(str(exc)) from exc
    for warning in inventory.warnings if inventory else []:
        print(f"llmtpu: warning: {warning}", file=sys.stderr)
    return specs


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from llmtpu.hostkeys import HostKeyStore, host_key_name
    from llmtpu.inventory import describe

    specs = resolve_specs(args, args.hosts, args.limit)
    store = HostKeyStore()
    rows = describe(specs)
    for row, spec in zip(rows, specs, strict=True):
        known = [k for k in store.lookup(host_key_name(spec.hostname, spec.port)) if k.marker is None]
        row["host_keys"] = [f"{k.key_type} {k.fingerprint}" for k in known]
    if args.json:
        json.dump({"schema": "llmtpu.hosts/1", "hosts": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return Exit.OK
    table = Table(title=f"{len(rows)} host{'' if len(rows) == 1 else 's'}")
    for column in ("host", "address", "root", "groups", "host key"):
        table.add_column(column, overflow="fold")
    for row in rows:
        via = f" via {', '.join(row['jump'])}" if row["jump"] else ""
        key = "; ".join(row["host_keys"]) or "unknown: llmtpu hosts trust " + row["name"]
        table.add_row(row["name"], f"{row['user']}@{row['hostname']}:{row['port']}{via}", row["root"],
                      ",".join(row["groups"]), key)
    Console(highlight=False).print(table)
    return Exit.OK


def run_trust(args: argparse.Namespace) -> int:
    from llmtpu.hostkeys import HostKeyStore

    if not args.connect_timeout > 0:
        raise UsageError(f"--connect-timeout: {args.connect_timeout:g} must be more than 0 seconds")
    if args.fingerprint and not args.fingerprint.startswith("SHA256:"):
        raise UsageError(f"--fingerprint: {args.fingerprint!r} is not a SHA256:... fingerprint (ssh-keygen -lf)")
    specs = resolve_specs(args, ",".join(args.names), None)
    store = HostKeyStore()
    worst: int = Exit.OK
    for spec in specs:
        worst = max(worst, trust_one(spec, store, args))
    return worst


def trust_one(spec: Any, store: Any, args: argparse.Namespace) -> int:
    import paramiko

    from llmtpu.hostkeys import describe_key, fetch_host_key, fingerprint, host_key_name
    from llmtpu.ssh import SSHError, SSHOptions, SSHTarget

    name = host_key_name(spec.hostname, spec.port)
    jump_target = None
    try:
        sock = None
        if spec.jump:
            last, before = spec.jump[-1], spec.jump[:-1]
            jump_spec = type(spec)(name=last.name, hostname=last.hostname, port=last.port, user=last.user,
                                   identity_files=last.identity_files, jump=before)
            jump_target = SSHTarget(jump_spec, SSHOptions(store=store, connect_timeout=args.connect_timeout))
            jump_target.connect()
            sock = jump_target.open_tunnel(spec.hostname, spec.port)
        key = fetch_host_key(spec.hostname, spec.port, args.connect_timeout, sock=sock)
    except (SSHError, paramiko.SSHException, OSError, EOFError) as exc:
        print(f"{spec.name}: cannot get the host key of {name}: {exc or type(exc).__name__}", file=sys.stderr)
        return Exit.UNREACHABLE
    finally:
        if jump_target is not None:
            jump_target.close()
    print(f"{spec.name} ({name}) presents {describe_key(key)}")
    known = [k for k in store.lookup(name) if k.marker is None]
    if any(k.blob == key.asbytes() for k in known):
        match = next(k for k in known if k.blob == key.asbytes())
        print(f"{spec.name}: already trusted ({match.file}:{match.line})")
        return Exit.OK
    if known:
        old = known[0]
        print(f"{spec.name}: HOST KEY CHANGED: {old.file}:{old.line} records {old.key_type} {old.fingerprint}. "
              "Not replaced. If the machine was re-installed, check the new fingerprint on its console, then "
              f"remove the old line (ssh-keygen -R '{name}' -f {old.file}) and trust it again.", file=sys.stderr)
        return Exit.UNREACHABLE
    got = fingerprint(key.asbytes())
    if args.fingerprint:
        if args.fingerprint.rstrip("=") != got:
            print(f"{spec.name}: fingerprint {got} is not the expected {args.fingerprint}; not recorded",
                  file=sys.stderr)
            return Exit.UNREACHABLE
    elif not args.yes:
        if not sys.stdin.isatty():
            print(f"{spec.name}: not recorded. Compare the fingerprint with the machine's own "
                  "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on its console), then rerun with --yes "
                  "or --fingerprint SHA256:...", file=sys.stderr)
            return Exit.UNREACHABLE
        answer = input(f"Trust this key for {spec.name}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print(f"{spec.name}: not recorded", file=sys.stderr)
            return Exit.UNREACHABLE
    store.add(name, key)
    print(f"{spec.name}: trusted; recorded in {os.fspath(store.own_file)}")
    return Exit.OK

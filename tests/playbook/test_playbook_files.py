"""Playbook files: the built-in ones load; bad ones are refused with the line they are on."""

from __future__ import annotations

import pytest

from llmtpu.doctor.checks import check_ids
from llmtpu.playbook import PlaybookError, builtin_names, parse_playbook, read_playbook_text

CHECKS = set(check_ids())
OPERATIONS = {"clock.apply"}

HEAD = '[playbook]\nname = "t"\n\n'


def parse(text: str):
    return parse_playbook(text, "t.toml", CHECKS, OPERATIONS)


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_playbooks_load(name: str) -> None:
    text, source = read_playbook_text(name)
    book = parse_playbook(text, source, CHECKS, OPERATIONS)
    assert book.name == name and book.steps


@pytest.mark.parametrize("body,message", [
    ('[[step]]\nid = "a"\nrun = "doctor"\n\n[[step]]\nid = "b"\nrun = "launch"\n', "t.toml:8: step 'b': unknown run"),
    ('[[step]]\nid = "a"\nrun = "say"\n', "t.toml:4: step 'a' (say) is missing text"),
    ('[[step]]\nid = "a"\nrun = "doctor"\nchecks = ["nope"]\n', "t.toml:4: step 'a': unknown check 'nope'"),
    ('[[step]]\nid = "a"\nrun = "operation"\noperation = "rm.rf"\n', "unknown operation 'rm.rf'"),
    ('[[step]]\nid = "a"\nrun = "doctor"\nwhen = "kernel.date = fail"\n', "is not '<check> is"),
    ('[[step]]\nid = "a"\nrun = "doctor"\nwhen = "kernel.date is broken"\n', "unknown status broken"),
    ('[[step]]\nid = "a"\nrun = "doctor"\nbogus = 1\n', "does not take bogus"),
    ('[[step]]\nid = "a"\nrun = "doctor"\n\n[[step]]\nid = "a"\nrun = "doctor"\n',
     "t.toml:8: step id 'a' is used twice"),
    ('[[step]]\nid = "a"\nrun = "doctor"\nafter = ["c"]\n', "after names unknown step 'c'"),
    ('[[step]]\nid = "a"\nrun = "doctor"\nafter = ["b"]\n\n[[step]]\nid = "b"\nrun = "doctor"\nafter = ["a"]\n',
     "steps form a cycle: a -> b -> a"),
    ('[[step]]\nid = "a"\nrun = "doctor"\nrequire = "perfect"\n', "require must be"),
])
def test_bad_playbooks_are_refused_with_their_line(body: str, message: str) -> None:
    with pytest.raises(PlaybookError) as info:
        parse(HEAD + body)
    assert message in str(info.value)


def test_not_toml_and_no_steps() -> None:
    with pytest.raises(PlaybookError, match="not valid TOML"):
        parse("[playbook\n")
    with pytest.raises(PlaybookError, match="no \\[\\[step\\]\\]"):
        parse(HEAD)
    with pytest.raises(PlaybookError, match="missing \\[playbook\\]"):
        parse('[[step]]\nid = "a"\nrun = "doctor"\n')


def test_after_reorders_steps() -> None:
    book = parse(HEAD + '[[step]]\nid = "b"\nrun = "doctor"\nafter = ["a"]\n\n[[step]]\nid = "a"\nrun = "doctor"\n')
    assert [s.id for s in book.steps] == ["a", "b"]


def test_unknown_builtin_name_lists_the_real_ones() -> None:
    with pytest.raises(PlaybookError, match="fresh-soc-board"):
        read_playbook_text("no-such-playbook")

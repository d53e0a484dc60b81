"""Secrets in log lines are masked before a report leaves the machine: every shape users paste."""

from __future__ import annotations

import pytest

from llmtpu.doctor.explain import REDACTED, redact_line, redact_lines

#: (line, the secret that must vanish). Each shape is one that a hand list missed (issue 11,
#: item 18) or one detect-secrets' detectors know; keep adding shapes here.
CORPUS = [
    ("fetching https://ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123@github.com/sophgo/LLM-TPU", "ghp_ABCDEFGHIJKLMNOPQR"),
    ("clone https://oauth2token99@gitlab.example.com/x.git", "oauth2token99"),
    ("fetching https://bob:hunter2@example.com/model.bmodel", "hunter2"),
    ('{"password": "s3cr3t-json"}', "s3cr3t-json"),
    ("{'password': 'pyd1ct-secret'}", "pyd1ct-secret"),
    ("Authorization: Bearer eyBearerTokenValue123", "eyBearerTokenValue123"),
    ("authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("DB_PASS=dbpass-value-1", "dbpass-value-1"),
    ("export MYSQL_ROOT_PASSWORD=rootpw77", "rootpw77"),
    ("export DB_PASSWORD=hunter3", "hunter3"),
    ("sshpass -p sshpass-secret ssh linaro@board", "sshpass-secret"),
    ("sshpass -psshpass-glued ssh linaro@board", "sshpass-glued"),
    ("mysql -u root -pMyS3cretPw -h db", "MyS3cretPw"),
    ("mysql -u llm --password hunter4 -e 'select 1'", "hunter4"),
    ("Cookie: session=cookie-value-abc; theme=dark", "cookie-value-abc"),
    ("Set-Cookie: sid=setcookie-value; Path=/", "setcookie-value"),
    ("the password is prose-secret", "prose-secret"),
    ("The password was OldProse1", "OldProse1"),
    ("machine sophgo.com login open password netrc-secret", "netrc-secret"),
    ("token: tok-value-xyz", "tok-value-xyz"),
    ("api_key=apikey-value-123", "apikey-value-123"),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("export OPENAI_API_KEY=sk-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst", "sk-abcdefghijklmnopqrst"),
    ("slack xoxb-123456789012-1234567890123-abcdefghijklmnopqrstuvwx posted", "xoxb-123456789012"),
    ("header eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIi"),
    ("--token cli-token-value", "cli-token-value"),
]

#: Lines that hold no secret and must come out unchanged (the evidence a report is for).
KEPT = [
    "[BMRT][fix_gdma_addr:488] FATAL:gdma dst shouldn't be coeff, origin[0x1071d8000], ctx[0x1071f8000]",
    "[    9.200000] bm-tpu0: bmdrv: probe start",
    "[bmlib_memory][error] bm_alloc_gmem failed, dev_id = 0, size = 0x25180000",
    "kernel_module md5: b1a3be79d383ae55916e67b482035021",
    "Password authentication is disabled on this board",
    "bmodel version: B.2.2+v1.8.beta.0-331-g9ce86277c-20240822",
]


@pytest.mark.parametrize("line, secret", CORPUS, ids=[s for _, s in CORPUS])
def test_every_secret_shape_is_masked(line, secret):
    masked = redact_line(line)
    assert secret not in masked, masked
    assert REDACTED in masked


@pytest.mark.parametrize("line", KEPT)
def test_lines_without_secrets_are_kept_as_they_are(line):
    assert redact_line(line) == line


def test_private_key_blocks_are_masked_whole():
    lines = ["before", "-----BEGIN OPENSSH PRIVATE KEY-----", "b3BlbnNzaC1rZXktdjEAAAAA", "SECRETKEYMATERIAL",
             "-----END OPENSSH PRIVATE KEY-----", "after"]
    assert redact_lines(lines) == ["before", REDACTED, REDACTED, REDACTED, REDACTED, "after"]


def test_the_case_insensitive_token_detectors_need_a_word_the_cheap_check_sees():
    """Those are run only on lines where _MAY_HOLD_SECRET finds a word; each pattern requires one."""
    from llmtpu.doctor.explain import _detectors

    for regex in _detectors().keyword_always:
        assert "(?:key|pwd|pw|password|pass|token)" in regex.pattern, regex.pattern


def test_the_pre_filters_do_not_change_what_is_masked():
    """Every token regex on every line, no pre-filter: the same result as redact_line."""
    from llmtpu.doctor.explain import _detectors

    found = _detectors()
    lines = [line for line, _ in CORPUS] + KEPT + [
        "fw AKIAIOSFODNN7EXAMPLE loaded", "user ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123", "plain words only"]
    for line in lines:
        masked = redact_line(line)
        for regex in found.tokens:
            assert not regex.search(masked) or REDACTED in regex.search(masked).group(0), (line, regex.pattern)

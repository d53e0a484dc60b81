"""The built-in playbooks: TOML data files read by llmtpu.playbook (copy one to adapt it)."""

if __name__ != "llmtpu.playbooks":  # the folder is also importable from the repo root; one name only
    raise ImportError(f"import llmtpu.playbooks, not {__name__}: playbooks/ has one import name (README: Layout)")

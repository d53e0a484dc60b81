"""The built-in playbooks: TOML data files read by llmtpu.playbook (copy one to adapt it)."""

"""Real pasted outputs from public threads, each with its source and the verdict its resolution supports."""

"""The bundled inference engine's Python side (built from csrc/ with the engine issue)."""

if __name__ != "llmtpu.runtime":  # the folder is also importable from the repo root; one name only
    raise ImportError(f"import llmtpu.runtime, not {__name__}: runtime/ has one import name (README: Layout)")

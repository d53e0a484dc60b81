"""The bundled inference engine's Python side (built from csrc/ with the engine issue)."""

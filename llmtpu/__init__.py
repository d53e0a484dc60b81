"""llmtpu: take Sophgo BM1684X machines from fresh to running LLM-TPU models correctly."""

__version__ = "0.1.0"

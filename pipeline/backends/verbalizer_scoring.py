"""Log-probability of each verbalizer after each prompt, on a transformers causal LM.

Verbalizers are grouped by everything but their last token: one forward of prompt + shared
prefix scores every verbalizer of the group (its last token is read off the final position).
With single-token verbalizers that is one forward of the prompt for all labels; multi-token
verbalizers are scored as whole sequences (the sum of their tokens' log-probs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

VerbalizerGroup = tuple[tuple[int, ...], list[tuple[int, int]]]  # (shared prefix, [(label index, last token)])


def verbalizer_groups(verbalizers: Sequence[Sequence[int]]) -> list[VerbalizerGroup]:
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for label, tokens in enumerate(verbalizers):
        groups.setdefault(tuple(tokens[:-1]), []).append((label, tokens[-1]))
    return list(groups.items())


@torch.inference_mode()
def verbalizer_logprobs(model: torch.nn.Module, pad_id: int, prompts: Sequence[Sequence[int]], verbalizers: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
    """float64 [len(prompts), len(verbalizers)]: log P(verbalizer | prompt), raw (temperature 1, not normalised).

    Left padding with explicit position ids, so every row's scored positions are its last ones and
    the model computes logits only there (`logits_to_keep`).
    """
    groups = verbalizer_groups(verbalizers)
    jobs = [(i, g) for i in range(len(prompts)) for g in range(len(groups))]
    jobs.sort(key=lambda job: len(prompts[job[0]]) + len(groups[job[1]][0]))  # less padding
    device = next(model.parameters()).device
    out = np.zeros((len(prompts), len(verbalizers)), dtype=np.float64)
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        sequences = [list(prompts[i]) + list(groups[g][0]) for i, g in batch]
        width = max(len(s) for s in sequences)
        keep = max(len(groups[g][0]) for _, g in batch) + 1
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits[:, -keep:].float(), dim=-1).double().cpu()
        for row, (i, g) in enumerate(batch):
            prefix, members = groups[g]
            tail = logprobs[row, keep - 1 - len(prefix) :]  # tail[t] predicts prefix[t]; tail[-1] the last token
            base = sum(tail[t, token].item() for t, token in enumerate(prefix))
            for label, last in members:
                out[i, label] = base + tail[-1, last].item()
    return out


def normalise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-probs normalised over the labels [n, L], verbalizer mass [n] = sum of exp(raw))."""
    top = raw.max(axis=1, keepdims=True)
    log_mass = top[:, 0] + np.log(np.exp(raw - top).sum(axis=1))
    return raw - log_mass[:, None], np.exp(log_mass)

"""Open-instruct-style instruction templates: short phrasings wrapped around the instruction.

The paper's Dolly/Alpaca prompts went through open-instruct's ``encode_instruction_example(...,
random_template=True)``, which picks one of a list of phrasings at random per example. These
phrasings are our own (same idea, different wording). The choice is seeded and depends only on
``(seed, example id)``, so it does not change when the data are reordered or subsampled.
Outputs are never changed.
"""

from __future__ import annotations

import hashlib

from im_pipeline.data.normalise import Phraser

TEMPLATES_NO_INPUT: tuple[str, ...] = (
    "{instruction}",
    "{instruction}\n\nAnswer:",
    "Task: {instruction}\n\nResponse:",
    "Please respond to the following request.\n\n{instruction}",
    "Here is an instruction. Write a reply that carries it out.\n\nInstruction: {instruction}",
    "{instruction}\n\nWrite your answer below.",
    "Read the request and answer it.\n{instruction}",
    "Instruction:\n{instruction}\n\nYour answer:",
    "Question: {instruction}\nAnswer:",
    "Complete the following.\n\n{instruction}",
)

TEMPLATES_WITH_INPUT: tuple[str, ...] = (
    "{instruction}\n\n{input}",
    "{instruction}\n\nInput: {input}\n\nOutput:",
    "Task: {instruction}\n\nContext: {input}\n\nResponse:",
    "Below is a task together with some context. Carry out the task.\n\nTask: {instruction}\nContext: {input}",
    "{instruction}\n\nHere is the input:\n{input}\n\nAnswer:",
    "Use the information below to complete the task.\nInformation: {input}\nTask: {instruction}",
    "Instruction: {instruction}\nInput: {input}\nOutput:",
    "Consider the following text.\n{input}\n\n{instruction}",
)


def template_index(seed: int, example_id: str, n_templates: int) -> int:
    """Which phrasing an example gets: a hash of (seed, id), so independent of order."""
    digest = hashlib.sha256(f"phrasing:{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_templates


def phrase(instruction: str, input_text: str, example_id: str, seed: int = 0) -> str:
    """Wrap ``instruction`` (and ``input``, if any) in a phrasing chosen by ``(seed, example_id)``."""
    instruction, input_text = instruction.strip(), input_text.strip()
    if input_text:
        tpl = TEMPLATES_WITH_INPUT[template_index(seed, example_id, len(TEMPLATES_WITH_INPUT))]
        return tpl.format(instruction=instruction, input=input_text)
    tpl = TEMPLATES_NO_INPUT[template_index(seed, example_id, len(TEMPLATES_NO_INPUT))]
    return tpl.format(instruction=instruction)


def make_phraser(seed: int) -> Phraser:
    """A phraser for :func:`im_pipeline.data.normalise.normalise_record`, bound to ``seed``."""

    def _phrase(instruction: str, input_text: str, example_id: str) -> str:
        return phrase(instruction, input_text, example_id, seed)

    return _phrase

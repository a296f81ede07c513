"""Normalisation of raw training examples to the messages format.

Normalised record (open-instruct / TRL conversational format)::

    {"id": str, "source": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}

Accepted raw shapes, detected per record:

* **messages** — already normalised (``id`` optional; a missing id becomes ``<source>-<index>``);
* **Alpaca** — ``instruction`` / ``input`` (optional) / ``output``, with optional LIMA-style
  ``history`` (list of ``[user, assistant]`` pairs that come before the final turn). ``input`` is
  joined to the instruction as open-instruct does: ``instruction.strip() + "\\n\\n" + input.strip()``;
* **ShareGPT** — ``conversations``: a list of ``{"from": "human" | "gpt" | "system", "value": str}`` (also
  ``user`` / ``assistant`` / ``chatgpt``, and ``{"role", "content"}`` turns), optional top-level ``system``;
* **prompt / completion** — TRL's format: two strings (user turn, assistant turn), or two lists of messages
  (conversational: the prompt's system / user / assistant turns, then the completion's assistant turn);
* **LIMA** — ``conversations``: a list of strings alternating user / assistant (GAIR/LIMA Hub format).

Other field names are mapped to these with ``columns`` (``data.columns``: our name → the file's name).

Structural problems raise :class:`DataError` naming the location (file + line, or record index).
Empty *content* (an empty instruction or output) is not a structural error: it is handled by the
explicit ``on_empty`` policy in :mod:`im_pipeline.data.prepare`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ROLES = ("system", "user", "assistant")

# phrase(instruction, input, example_id) -> user content; used for open-instruct-style instruction templates.
Phraser = Callable[[str, str, str], str]


class DataError(ValueError):
    """Malformed or unavailable training data. The message names the file and line (or record index)."""


def join_instruction_input(instruction: str, input_text: str = "") -> str:
    """Alpaca ``instruction`` + ``input`` the way open-instruct joins them (no template)."""
    instruction, input_text = instruction.strip(), input_text.strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _require_str(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def validate_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Check ``messages``: optional leading system turn, then user/assistant alternating, ending with assistant."""
    if not isinstance(messages, list):
        raise DataError(f"{where}: field 'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise DataError(f"{where}: field 'messages' is empty (need at least one user and one assistant turn)")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: messages[{i}] must be an object, got {type(msg).__name__}")
        if "role" not in msg or "content" not in msg:
            missing = [k for k in ("role", "content") if k not in msg]
            raise DataError(f"{where}: messages[{i}] is missing field {missing[0]!r}")
        role = msg["role"]
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}] has role {role!r}; allowed roles: {', '.join(ROLES)}")
        content = _require_str(msg["content"], f"messages[{i}].content", where)
        out.append({"role": role, "content": content})
    body = out[1:] if out[0]["role"] == "system" else out
    if not body:
        raise DataError(f"{where}: 'messages' has only a system turn")
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            pos = i + (len(out) - len(body))
            raise DataError(
                f"{where}: messages[{pos}] has role {msg['role']!r} but {expected!r} was expected "
                "(turns must alternate user/assistant after an optional system turn)"
            )
    if body[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last turn must be 'assistant' (got 'user'): nothing to learn from")
    return out


def _alpaca_messages(raw: dict[str, Any], where: str, phrase: Phraser | None, example_id: str) -> list[dict[str, str]]:
    if "output" not in raw:
        raise DataError(f"{where}: Alpaca-style record is missing field 'output'")
    instruction = _require_str(raw["instruction"], "instruction", where)
    input_text = raw.get("input") or ""
    input_text = _require_str(input_text, "input", where)
    output = _require_str(raw["output"], "output", where)
    messages: list[dict[str, str]] = []
    system = raw.get("system")
    if system:
        messages.append({"role": "system", "content": _require_str(system, "system", where)})
    history = raw.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}: field 'history' must be a list of [user, assistant] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise DataError(f"{where}: history[{i}] must be a [user, assistant] pair")
        messages.append({"role": "user", "content": _require_str(pair[0], f"history[{i}][0]", where)})
        messages.append({"role": "assistant", "content": _require_str(pair[1], f"history[{i}][1]", where)})
    if phrase is not None:
        prompt = phrase(instruction.strip(), input_text.strip(), example_id)
    else:
        prompt = join_instruction_input(instruction, input_text)
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output.strip()})
    return messages


SHAPES = (
    "messages ({'messages': [{'role', 'content'}, ...]}), ShareGPT ({'conversations': [{'from': human|gpt|system, "
    "'value'}, ...]}), prompt/completion (TRL: two strings or two message lists), Alpaca ('instruction', 'input', "
    "'output'), LIMA ({'conversations': [str, ...]}); other field names: map them with data.columns"
)
"""The accepted shapes, in words (every error about a record's shape names them)."""

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def apply_columns(raw: Any, columns: dict[str, str] | None) -> Any:
    """``raw`` with the file's field names renamed to ours (``columns``: our name → the file's name)."""
    if not columns or not isinstance(raw, dict):
        return raw
    out = dict(raw)
    for ours, theirs in columns.items():
        if theirs in out and theirs != ours:
            out[ours] = out.pop(theirs)
    return out


def _sharegpt_messages(raw: dict[str, Any], where: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if raw.get("system"):
        messages.append({"role": "system", "content": _require_str(raw["system"], "system", where)})
    for i, turn in enumerate(raw["conversations"]):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: conversations[{i}] must be an object like the others ({SHAPES})")
        role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
        if role_key not in turn or text_key not in turn:
            raise DataError(
                f"{where}: conversations[{i}] needs 'from' and 'value' (ShareGPT); found keys: "
                f"{', '.join(sorted(map(str, turn))) or 'none'}"
            )
        role = SHAREGPT_ROLES.get(turn[role_key]) if isinstance(turn[role_key], str) else None
        if role is None:
            raise DataError(
                f"{where}: conversations[{i}] has {role_key} {turn[role_key]!r}; allowed: {', '.join(SHAREGPT_ROLES)}"
            )
        content = _require_str(turn[text_key], f"conversations[{i}].{text_key}", where)
        messages.append({"role": role, "content": content})
    return validate_messages(messages, where)


def _prompt_completion_messages(raw: dict[str, Any], where: str) -> list[dict[str, str]]:
    prompt, completion = raw["prompt"], raw["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if isinstance(prompt, list) and isinstance(completion, list):
        return validate_messages([*prompt, *completion], where)
    raise DataError(
        f"{where}: 'prompt' and 'completion' must both be strings or both lists of messages (TRL's standard or "
        f"conversational form), got {type(prompt).__name__} and {type(completion).__name__}"
    )


def _conversation_messages(conv: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(conv, list):
        raise DataError(f"{where}: field 'conversations' must be a list (ShareGPT turns or LIMA strings)")
    if not conv:
        raise DataError(f"{where}: field 'conversations' is empty")
    if len(conv) % 2:
        raise DataError(f"{where}: 'conversations' has {len(conv)} turns; it must end with an assistant turn")
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": _require_str(t, f"conversations[{i}]", where)}
        for i, t in enumerate(conv)
    ]


def normalise_record(
    raw: Any, *, source: str, default_id: str, where: str, phrase: Phraser | None = None
) -> dict[str, Any]:
    """Turn one raw example into a normalised record; raise :class:`DataError` naming ``where`` if malformed.

    ``phrase`` (optional) wraps the final instruction in an instruction template; for records already
    in messages form it wraps the first user turn (there is no separate ``input`` there).
    """
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object (one example), got {type(raw).__name__}")
    rid = raw.get("id", default_id)
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        raise DataError(f"{where}: field 'id' must be a string or integer, got {type(rid).__name__}")
    rid = str(rid)
    if "messages" in raw:
        messages = validate_messages(raw["messages"], where)
        if phrase is not None:
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first] = {"role": "user", "content": phrase(messages[first]["content"].strip(), "", rid)}
    elif "instruction" in raw:
        messages = _alpaca_messages(raw, where, phrase, rid)
    elif "conversations" in raw or ("prompt" in raw and "completion" in raw):
        conv = raw.get("conversations")
        if "conversations" not in raw:
            messages = _prompt_completion_messages(raw, where)
        elif isinstance(conv, list) and conv and isinstance(conv[0], dict):
            messages = _sharegpt_messages(raw, where)
        else:
            messages = _conversation_messages(raw["conversations"], where)
        if phrase is not None:
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[first] = {"role": "user", "content": phrase(messages[first]["content"].strip(), "", rid)}
    elif "prompt" in raw or "completion" in raw:
        missing = "completion" if "prompt" in raw else "prompt"
        raise DataError(f"{where}: missing field {missing!r} (prompt/completion); accepted shapes: {SHAPES}")
    else:
        keys = ", ".join(sorted(map(str, raw))) or "none"
        raise DataError(f"{where}: missing field: the keys {keys} match no accepted shape: {SHAPES}")
    # Only normalised records carry their own source; GAIR LIMA's 'source' (e.g. "stackexchange") is a sub-origin.
    src = raw.get("source") if "messages" in raw else None
    return {"id": rid, "source": src if isinstance(src, str) and src else source, "messages": messages}


def user_turns(record: dict[str, Any]) -> list[str]:
    return [m["content"] for m in record["messages"] if m["role"] == "user"]


def is_multi_turn(record: dict[str, Any]) -> bool:
    return len(user_turns(record)) > 1

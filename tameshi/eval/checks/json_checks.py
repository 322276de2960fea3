"""The `json` check: find the JSON in an answer, parse it, validate it (JSON Schema), compare values.

Answers wrap JSON in prose and fences, so the check looks, in order, at the whole answer, each fenced
block, then each `{` or `[` from which a JSON value parses. `strict: true` accepts only the first two:
the answer must be JSON, fences allowed, nothing around them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from tameshi.eval.checks.base import Answer, Verdict, clip, fold

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)


def extract_json(text: str, strict: bool = False) -> tuple[Any, str] | None:
    """(value, where) for the first JSON object or array in `text`, or None."""
    stripped = text.strip()
    candidates = [(stripped, "whole answer")]
    candidates += [(m.group(1).strip(), "fenced block") for m in _FENCE.finditer(text)]
    if strict and len(_FENCE.findall(text)) == 1 and _FENCE.sub("", text).strip():
        candidates = candidates[:1]  # prose around the fence: strict mode wants none
    for body, where in candidates:
        try:
            value = json.loads(body)
        except ValueError:
            continue
        if isinstance(value, dict | list):
            return value, where
    if strict:
        return None
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(value, dict | list) and value:
            return value, "inside the text"
    return None


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [fold(str(value))]


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, int | float) and isinstance(got, int | float):
        return abs(got - want) < 1e-9
    if isinstance(want, str) and isinstance(got, str):
        return fold(got) == fold(want)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict) and isinstance(got, dict):
        return all(k in got and _same(got[k], v) for k, v in want.items())
    return False


def check_json(answer: Answer, args: dict[str, Any]) -> Verdict:
    """`schema`: a JSON Schema the value must satisfy; `expect`: key → value pairs that must be there
    (strings compared NFKC + casefold; nested dicts as subsets); `contains_values`: strings that must
    each be one of the value's leaves, or part of one; `strict`: nothing but JSON."""
    found = extract_json(answer.text, strict=bool(args.get("strict")))
    if found is None:
        what = "the answer is not JSON" if args.get("strict") else "no JSON object or array found"
        return Verdict("json", False, what)
    value, where = found
    shape = f"object with keys {list(value)[:8]}" if isinstance(value, dict) else f"array of {len(value)}"
    schema = args.get("schema")
    if schema is not None:
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path)
        )
        if errors:
            e = errors[0]
            at = "/".join(str(p) for p in e.path) or "(root)"
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            return Verdict("json", False, f"schema: at {at}: {clip(e.message, 90)}{more}")
    for key, want in (args.get("expect") or {}).items():
        if not isinstance(value, dict) or key not in value:
            return Verdict("json", False, f"{shape}: no key {key!r}")
        if not _same(value[key], want):
            return Verdict(
                "json",
                False,
                f"{key} = {clip(json.dumps(value[key], ensure_ascii=False), 40)}, expected {want!r}",
            )
    leaves = _leaves(value)
    missing = [
        v for v in args.get("contains_values") or [] if not any(fold(str(v)) in leaf for leaf in leaves)
    ]
    if missing:
        return Verdict("json", False, f"{shape}: values missing {missing}")
    checked = [
        s
        for s, on in (
            ("schema", schema is not None),
            ("values", args.get("expect") or args.get("contains_values")),
        )
        if on
    ]
    return Verdict(
        "json", True, f"parsed ({where}): {shape}" + (f"; {' and '.join(checked)} ok" if checked else "")
    )


def validate_json(args: dict[str, Any]) -> None:
    schema = args.get("schema")
    if schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ValueError(f"json: the schema is not valid JSON Schema: {e.message}") from None
    if args.get("expect") is not None and not isinstance(args["expect"], dict):
        raise ValueError("json: 'expect' must be a mapping of key to value")

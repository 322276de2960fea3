"""Probe suites: YAML files → `Suite` of `Probe`s, checked on load with one-line errors.

A suite file (see tameshi/eval/suites/default.yaml for ~50 examples):

    name: my-suite
    description: what it probes
    probes:
      - id: capital                      # unique in the suite
        category: knowledge              # results are grouped by category × language
        tags: [easy]                     # optional
        prompt:                          # one entry per language; a plain string means both
          en: What is the capital of Japan? One word.
          ja: 日本の首都はどこですか？一語で答えてください。
        system: {en: Be brief., ja: 簡潔に答えてください。}   # optional
        answer_lang: {en: en, ja: ja}    # optional; the default is the prompt's language
        max_new_tokens: 64               # optional cap (the run's --max-new-tokens can only lower it)
        variant_of: other-probe-id       # optional: a reworded twin of a famous puzzle (memorisation flag)
        judge: {aspect: {en: ..., ja: ...}, reference: {en: ..., ja: ...}}   # optional, for --judge
        checks:
          - type: contains               # shared arguments beside `type` …
            en: {any: [Tokyo]}           # … and per-language ones under en / ja
            ja: {any: [東京]}
          - {type: number, value: 391, langs: [en]}   # `langs` limits a check to some languages
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tameshi.errors import SuiteError
from tameshi.eval.checks import CHECKERS

LANGS = ("en", "ja")
SUITES_DIR = Path(__file__).with_name("suites")
_PROBE_KEYS = {
    "id", "category", "tags", "prompt", "system", "answer_lang", "max_new_tokens", "variant_of", "judge", "checks",
}  # fmt: skip


@dataclass(frozen=True)
class CheckSpec:
    type: str
    args: dict[str, dict[str, Any]]  # language → the arguments for that language (absent: not run)


@dataclass(frozen=True)
class Judging:
    aspect: dict[str, str]  # language → what the judge should look at (ELYZA's eval_aspect)
    reference: dict[str, str]  # language → a reference answer (may be empty)


@dataclass(frozen=True)
class Probe:
    id: str
    category: str
    prompt: dict[str, str]
    checks: tuple[CheckSpec, ...] = ()
    system: dict[str, str] | None = None
    answer_lang: dict[str, str] | None = None
    max_new_tokens: int | None = None
    tags: tuple[str, ...] = ()
    variant_of: str | None = None
    judge: Judging | None = None

    @property
    def langs(self) -> tuple[str, ...]:
        return tuple(lang for lang in LANGS if lang in self.prompt)

    def expect_lang(self, lang: str) -> str:
        return (self.answer_lang or {}).get(lang, lang)

    def messages(self, lang: str) -> list[dict[str, str]]:
        system = (self.system or {}).get(lang)
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.prompt[lang]}
        ]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    sha256: str  # of the file's bytes: two runs compare only on the same probes
    probes: tuple[Probe, ...]

    def categories(self) -> list[str]:
        return list(dict.fromkeys(p.category for p in self.probes))


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def find_suite(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SuiteError(f"suite file {path} does not exist")
        return path
    builtin = SUITES_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    raise SuiteError(
        f"no suite named {name_or_path!r}; built in: {', '.join(builtin_suites())}, or give a .yaml path"
    )


def load_suite(name_or_path: str) -> Suite:
    path = find_suite(name_or_path)
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise SuiteError(f"{path}: not valid UTF-8 YAML{line}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("probes"), list) or not data["probes"]:
        raise SuiteError(f"{path}: a suite is a mapping with a non-empty 'probes' list")
    probes: list[Probe] = []
    for i, item in enumerate(data["probes"]):
        label = (
            f"{path}: probe {item.get('id', f'#{i + 1}')!r}"
            if isinstance(item, dict)
            else f"{path}: probe #{i + 1}"
        )
        try:
            probes.append(_probe(item))
        except ValueError as e:
            raise SuiteError(f"{label}: {e}") from None
    ids = [p.id for p in probes]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SuiteError(f"{path}: probe ids used twice: {', '.join(dupes)}")
    for p in probes:
        if p.variant_of and p.variant_of not in ids:
            raise SuiteError(f"{path}: probe {p.id!r}: variant_of {p.variant_of!r} is not a probe here")
    name = str(data.get("name") or path.stem)
    return Suite(
        name, str(data.get("description", "")), str(path), hashlib.sha256(raw).hexdigest(), tuple(probes)
    )


def _per_lang(value: Any, what: str, langs: tuple[str, ...] = LANGS) -> dict[str, str]:
    """A string (every language) or a mapping language → string."""
    if isinstance(value, str):
        return dict.fromkeys(langs, value)
    if isinstance(value, dict) and value and all(k in LANGS and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise ValueError(f"{what} must be a string or a mapping of {'/'.join(LANGS)} to strings")


def _probe(item: Any) -> Probe:
    if not isinstance(item, dict):
        raise ValueError("a probe is a mapping")
    unknown = set(item) - _PROBE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_PROBE_KEYS)}")
    for key in ("id", "category", "prompt"):
        if not item.get(key):
            raise ValueError(f"'{key}' is required")
    prompt = _per_lang(item["prompt"], "prompt")
    langs = tuple(lang for lang in LANGS if lang in prompt)
    n = item.get("max_new_tokens")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError("max_new_tokens must be a positive integer")
    answer_lang = _per_lang(item["answer_lang"], "answer_lang") if item.get("answer_lang") else None
    if answer_lang and not set(answer_lang.values()) <= set(LANGS):
        raise ValueError(f"answer_lang values must be among {', '.join(LANGS)}")
    checks = item.get("checks") or []
    if not isinstance(checks, list):
        raise ValueError("'checks' must be a list")
    tags = item.get("tags") or []
    if not isinstance(tags, list):
        raise ValueError("'tags' must be a list")
    return Probe(
        id=str(item["id"]),
        category=str(item["category"]),
        prompt=prompt,
        checks=tuple(_check(c, langs) for c in checks),
        system=_per_lang(item["system"], "system") if item.get("system") else None,
        answer_lang=answer_lang,
        max_new_tokens=n,
        tags=tuple(str(t) for t in tags),
        variant_of=str(item["variant_of"]) if item.get("variant_of") else None,
        judge=_judging(item["judge"], langs) if item.get("judge") else None,
    )


def _judging(value: Any, langs: tuple[str, ...]) -> Judging:
    if not isinstance(value, dict) or "aspect" not in value:
        raise ValueError("judge must be a mapping with 'aspect' (and optionally 'reference')")
    reference = _per_lang(value["reference"], "judge.reference", langs) if value.get("reference") else {}
    return Judging(_per_lang(value["aspect"], "judge.aspect", langs), reference)


def _check(spec: Any, langs: tuple[str, ...]) -> CheckSpec:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError("each check is a mapping with a 'type'")
    kind = spec["type"]
    if kind not in CHECKERS:
        raise ValueError(f"unknown check type {kind!r}; known: {', '.join(CHECKERS)}")
    checker = CHECKERS[kind]
    only = spec.get("langs") or list(langs)
    if not isinstance(only, list) or not set(only) <= set(LANGS):
        raise ValueError(f"check {kind}: 'langs' must be a list among {', '.join(LANGS)}")
    shared = {k: v for k, v in spec.items() if k not in ("type", "langs", *LANGS)}
    args: dict[str, dict[str, Any]] = {}
    for lang in langs:
        if lang not in only:
            continue
        extra = spec.get(lang) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"check {kind}: '{lang}' must be a mapping of arguments")
        merged = copy.deepcopy({**shared, **extra})
        unknown = set(merged) - set(checker.required) - set(checker.optional)
        if unknown:
            allowed = sorted({*checker.required, *checker.optional})
            raise ValueError(
                f"check {kind} ({lang}): unknown arguments {sorted(unknown)}; allowed: {allowed}"
            )
        missing = [k for k in checker.required if k not in merged]
        if missing:
            raise ValueError(f"check {kind} ({lang}): missing {missing}")
        if checker.validate:
            checker.validate(merged)
        args[lang] = merged
    return CheckSpec(kind, args)

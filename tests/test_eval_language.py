"""Answer language and Japanese script purity (eval/checks/language.py, cjk_forms.py): clean Japanese is
never flagged; Chinese forms, Chinese punctuation and Chinese sentences are, naming the characters."""

from __future__ import annotations

import pytest

from tameshi.eval.checks import Answer, hygiene_checks
from tameshi.eval.checks.language import check_language, check_script_purity, detect_language

# Natural Japanese of the kinds a model writes: kanji + kana, full-width punctuation and digits,
# katakana loanwords, long vowel marks, brackets, waves, iteration marks, emoji, Latin words and code.
CLEAN_JAPANESE = [
    "東京は日本の首都です。人口は約1400万人で、多くの会社があります。",
    "「ありがとう」と言われて、とても嬉しかったです！",
    "コンピューター、スマートフォン、インターネットは現代の生活に欠かせません。",
    "ＡＢＣ社の売上は１２３億円（前年比＋５％）でした。",
    "時々、人々は〜のように言います。10時～12時は会議です。",
    "『吾輩は猫である』は夏目漱石の小説です・・・名作ですね。",
    "メールはtest@example.comに送ってください。",
    "今日はいい天気ですね😊 散歩に行きましょう♪",
    "私は学生です，毎日学校に行きます．",  # a scientific writer's full-width comma and period
    "𠮟る、剝がす、頰、補塡は2010年の常用漢字です。",  # Jōyō kanji outside JIS X 0208
    "渡辺さん、斉藤さん、高橋さんが来ました。",
    "次のコードを実行してください。\n```python\nprint('这是中文')\n```",  # code is not prose
    "ブロッコリーを茹でて、マヨネーズをかけます。",
    "空が青いのは、太陽の光が空気の分子によって散乱され、波長の短い青い光がより多く散らばるためです。",
]


def ja(text: str) -> Answer:
    return Answer(text=text, lang="ja", expect_lang="ja")


def en(text: str) -> Answer:
    return Answer(text=text, lang="en", expect_lang="en")


@pytest.mark.parametrize("text", CLEAN_JAPANESE)
def test_clean_japanese_is_never_flagged(text: str) -> None:
    v = check_script_purity(ja(text), {})
    assert v.passed, v.evidence
    assert check_language(ja(text), {}).passed


@pytest.mark.parametrize(
    ("text", "char", "words"),
    [
        ("这是一个问题です。", "这", "simplified"),  # outside JIS X 0208
        ("价格は100円です。", "价", "Japanese writes 価"),  # simplified, but inside JIS X 0208
        ("日本の國は美しいです。", "國", "Japanese writes 国"),  # traditional form, inside JIS X 0208
        ("この說明はわかりやすい。", "說", "traditional"),
        ("网站を見てください。", "网", "simplified"),
        ("我们は学生です。", "们", "simplified"),
        ("天气がいいです。", "气", "Japanese writes 気"),
        ("吗？と聞きました。", "吗", "Chinese-only"),
    ],
)
def test_simplified_and_traditional_forms_are_flagged_by_name(text: str, char: str, words: str) -> None:
    v = check_script_purity(ja(text), {})
    assert not v.passed and char in v.evidence and words in v.evidence, v.evidence


def test_chinese_punctuation_and_chinese_sentences_are_flagged() -> None:
    v = check_script_purity(ja("東京は日本の首都です。首都人口很多，经济发达。"), {})
    assert not v.passed and "，" in v.evidence and "chinese-punctuation" in v.evidence
    v = check_script_purity(ja("答えは5です。我认为这个问题的答案是五个人在这里"), {})
    assert not v.passed and "chinese-sentence" in v.evidence


def test_purity_runs_only_on_answers_meant_to_be_japanese() -> None:
    names = [v.name for v in hygiene_checks(en("The answer is 5."))]
    assert "script_purity" not in names and "language" in names
    names = [v.name for v in hygiene_checks(ja("答えは5です。"))]
    assert "script_purity" in names


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("The capital of Japan is Tokyo, and it is a very large city.", "en"),
        ("日本の首都は東京です。", "ja"),
        ("カタカナ", "ja"),
        ("日本的首都是东京，这是一个很大的城市。", "zh"),
        ("한국의 수도는 서울입니다.", "ko"),
        ("La capitale du Japon est Tokyo et elle est très grande.", "other"),
        ("42", "unknown"),
        ("```python\ndef f():\n    return 1\n```", "unknown"),  # code only: no prose to judge
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text)[0] == lang


def test_language_check_in_both_directions() -> None:
    assert check_language(en("Tokyo is the capital of Japan and the largest city."), {}).passed
    v = check_language(en("東京は日本の首都です。"), {})
    assert not v.passed and "reads as ja, expected en" in v.evidence
    assert check_language(ja("東京は日本の首都です。"), {}).passed
    v = check_language(ja("The capital of Japan is Tokyo, of course."), {})
    assert not v.passed and "reads as en, expected ja" in v.evidence
    v = check_language(ja("日本的首都是东京，这是一个很大的城市。"), {})
    assert not v.passed and "reads as zh" in v.evidence
    # translation probes: a Japanese question whose answer should be English
    tr = Answer(text="A new bakery opened in front of the station.", lang="ja", expect_lang="en")
    assert check_language(tr, {}).passed


def test_json_keys_and_code_do_not_decide_the_language() -> None:
    assert check_language(ja('{"name": "抹茶ラテ", "price_yen": 520, "in_stock": false}'), {}).passed
    assert check_language(ja('{"name": "Matcha latte", "price_yen": 520}'), {}).passed  # too little to tell
    v = check_language(ja('{"answer": "The capital of Japan is Tokyo, of course."}'), {})
    assert not v.passed  # the values are still read


def test_every_japanese_text_in_the_shipped_suite_is_clean() -> None:
    from tameshi.eval.suite import load_suite

    texts = []
    for p in load_suite("default").probes:
        texts += [p.prompt["ja"], (p.system or {}).get("ja", "")]
        if p.judge:
            texts += [p.judge.aspect.get("ja", ""), p.judge.reference.get("ja", "")]
    texts = [t for t in texts if t]
    assert len(texts) > 60
    for text in texts:
        v = check_script_purity(ja(text), {})
        assert v.passed, (text, v.evidence)

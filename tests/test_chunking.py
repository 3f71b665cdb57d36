"""Tests for the streaming sentence chunker and the speakable-text cleanup."""

from __future__ import annotations

import logging
import random
import time

import pytest

from mlx_stream_tts.chunking import SentenceChunker, chunk_sentences, code_cue, is_code_block, speakable


def whole(text: str, lang: str = "en", max_chars: int = 200) -> list[str]:
    chunker = SentenceChunker(lang, max_chars=max_chars)
    return chunker.feed(text) + chunker.flush()


def by_pieces(text: str, lang: str = "en", seed: int = 0, longest: int = 7, max_chars: int = 200) -> list[str]:
    """Feeds the text in random pieces (1 character up to ``longest``)."""
    rng = random.Random(seed)
    chunker = SentenceChunker(lang, max_chars=max_chars)
    out, k = [], 0
    while k < len(text):
        n = rng.randint(1, longest)
        out += chunker.feed(text[k : k + n])
        k += n
    return out + chunker.flush()


def release_points(text: str, lang: str = "en") -> list[tuple[str, int | None]]:
    """Feeds one character at a time: each chunk with the index of the character that released it
    (None: released only by flush)."""
    chunker = SentenceChunker(lang)
    out: list[tuple[str, int | None]] = []
    for k, ch in enumerate(text):
        out += [(s, k) for s in chunker.feed(ch)]
    return out + [(s, None) for s in chunker.flush()]


def nonspace(text: str) -> str:
    return "".join(text.split())


def check_invariants(text: str, chunks: list[str]) -> None:
    """Chunks are stripped, non-empty pieces of the input, in order, and lose nothing."""
    pos = 0
    for chunk in chunks:
        assert chunk and chunk == chunk.strip() or chunk.startswith((" ", "\t")), repr(chunk)
        found = text.find(chunk, pos)
        assert found >= 0, f"chunk {chunk!r} is not in the input (after {pos})"
        pos = found + len(chunk)
    assert nonspace("".join(chunks)) == nonspace(text)


# --------------------------------------------------------------------------------------------
# The case table: (input, expected chunks). Our own sentences, by category.

EN_CASES = [
    # Plain ends.
    ("The build passed. Tests are green.", ["The build passed.", "Tests are green."]),
    ("Is it ready? Yes, ship it.", ["Is it ready?", "Yes, ship it."]),
    ("Watch out! The cache is stale.", ["Watch out!", "The cache is stale."]),
    ("One sentence only", ["One sentence only"]),
    ("Ends with a number 42. Next one starts.", ["Ends with a number 42.", "Next one starts."]),
    ("He scored 100%. It was perfect.", ["He scored 100%.", "It was perfect."]),
    ("The ratio is 1:2. That is fine.", ["The ratio is 1:2.", "That is fine."]),
    # Abbreviations that never end a sentence.
    ("Dr. Watson met Mrs. Hudson on Baker St. near noon.", ["Dr. Watson met Mrs. Hudson on Baker St. near noon."]),
    ("The summit of Mt. Everest is high.", ["The summit of Mt. Everest is high."]),
    ("Prof. Kim and Sgt. Pepper met.", ["Prof. Kim and Sgt. Pepper met."]),
    ("Visit St. Louis. It is nice.", ["Visit St. Louis.", "It is nice."]),
    ("Prices rose, e.g. bread and milk.", ["Prices rose, e.g. bread and milk."]),
    ("Use a tool, i.e. a hammer.", ["Use a tool, i.e. a hammer."]),
    ("Cats vs. dogs is an old debate.", ["Cats vs. dogs is an old debate."]),
    ("See e.g. The Art of Computer Programming.", ["See e.g. The Art of Computer Programming."]),
    ("Mr.\nSmith arrived late.", ["Mr.\nSmith arrived late."]),
    # Generic abbreviations: a capitalized sentence starter after them splits, a name does not.
    ("See p. 12 for details.", ["See p. 12 for details."]),
    ("It was released in Jan. 2020 by the team.", ["It was released in Jan. 2020 by the team."]),
    ("The box weighs 5 kg. The lid is light.", ["The box weighs 5 kg.", "The lid is light."]),
    ("Martin Luther King Jr. Day is a holiday.", ["Martin Luther King Jr. Day is a holiday."]),
    ("That is John Jr.'s car.", ["That is John Jr.'s car."]),
    ("The data is from Smith et al. The authors agree.", ["The data is from Smith et al.", "The authors agree."]),
    ("The symbol for minutes is min. The hour has sixty.", ["The symbol for minutes is min.", "The hour has sixty."]),
    ("A min. is short.", ["A min. is short."]),
    # Abbreviations that often end one: company suffixes, etc.
    ("We met Lee and co. at the office.", ["We met Lee and co. at the office."]),
    ("Ask Lee and co. They know the answer.", ["Ask Lee and co.", "They know the answer."]),
    ("I paid Acme & Co. It took a week.", ["I paid Acme & Co.", "It took a week."]),
    ("The list has apples, pears, etc. The rest is empty.", ["The list has apples, pears, etc.", "The rest is empty."]),
    ("Samsung Co. Ltd. reported profits.", ["Samsung Co. Ltd. reported profits."]),
    ("The firm FOO INC. sold shares.", ["The firm FOO INC. sold shares."]),
    ("Lee & Co. (founded 1990) grew.", ["Lee & Co. (founded 1990) grew."]),
    # "No." is an abbreviation only before a number.
    ("He is No. 1 in the rankings.", ["He is No. 1 in the rankings."]),
    ("No. I don't think so.", ["No.", "I don't think so."]),
    # Acronyms with periods.
    ("He moved to the U.K. How nice is that?", ["He moved to the U.K.", "How nice is that?"]),
    ("She works for the U.N. Security Council now.", ["She works for the U.N. Security Council now."]),
    ("They have been in the U.S.A. since 2010.", ["They have been in the U.S.A. since 2010."]),
    ("The U.S. Army base is large.", ["The U.S. Army base is large."]),
    ("There were cases in the E.U. The E.U. Council met.", ["There were cases in the E.U.", "The E.U. Council met."]),
    ("It starts at 9 a.m. sharp.", ["It starts at 9 a.m. sharp."]),
    ("We met at 10 p.m. The bar was closed.", ["We met at 10 p.m.", "The bar was closed."]),
    ("Send it to P.O. box 12.", ["Send it to P.O. box 12."]),
    ("I shop at J.C. Penney. It is big.", ["I shop at J.C. Penney.", "It is big."]),
    ("The shop opens at 8 a.m. Customers queue early.", ["The shop opens at 8 a.m.", "Customers queue early."]),
    # A title after a time starts a new sentence unless the time ends an opening adverbial (pySBD's
    # "He left the bank at 6 P.M. | Mr. Smith then went to the store." vs "At 5 a.m. Mr. Smith went").
    ("Call at 5 p.m. Mr. Lee will answer.", ["Call at 5 p.m.", "Mr. Lee will answer."]),
    ("At 5 p.m. Mr. Lee will answer.", ["At 5 p.m. Mr. Lee will answer."]),
    # Times go on before a time zone or a date, and end before a number or a sentence starter.
    ("The call is at 10 a.m. Pacific time on Monday.", ["The call is at 10 a.m. Pacific time on Monday."]),
    ("It leaves at 6 p.m. Eastern Standard Time.", ["It leaves at 6 p.m. Eastern Standard Time."]),
    ("It starts at 9 a.m. Monday, June 5.", ["It starts at 9 a.m. Monday, June 5."]),
    ("We met at 3 p.m. Saturday was busy.", ["We met at 3 p.m.", "Saturday was busy."]),
    ("Wake at 7 a.m. 8 a.m. is too late.", ["Wake at 7 a.m.", "8 a.m. is too late."]),
    ("At 6 a.m. The birds sing.", ["At 6 a.m.", "The birds sing."]),
    ("At 7 a. m. we left.", ["At 7 a. m. we left."]),
    # Eras behave like times; degrees after a name usually close the sentence.
    ("Rome was founded in 753 B.C. Augustus came later.", ["Rome was founded in 753 B.C.", "Augustus came later."]),
    ("In 44 B.C. Caesar was killed.", ["In 44 B.C. Caesar was killed."]),
    ("She earned her Ph.D. Tom was impressed.", ["She earned her Ph.D.", "Tom was impressed."]),
    ("He earned a Ph.D. in physics.", ["He earned a Ph.D. in physics."]),
    # Less common titles and ranks, and capitalized short forms without a vowel.
    ("Insp. Morse arrived late.", ["Insp. Morse arrived late."]),
    ("Supt. Hastings and Asst. Director Kim agreed.", ["Supt. Hastings and Asst. Director Kim agreed."]),
    ("Meet Mgr. Singh at the Jct. North exit.", ["Meet Mgr. Singh at the Jct. North exit."]),
    ("Hmm. That is odd.", ["Hmm.", "That is odd."]),
    # Bibliographic and legal references.
    ("The claim (cf. Smith 2001) is weak.", ["The claim (cf. Smith 2001) is weak."]),
    ("See vol. 3, para. 12 of the report.", ["See vol. 3, para. 12 of the report."]),
    ("The rule is in ibid. Section 4 of it.", ["The rule is in ibid. Section 4 of it."]),
    ("Call ext. 42 for help.", ["Call ext. 42 for help."]),
    # Units after a number: a number goes on, a capitalized word starts a new sentence.
    ("It was 5 ft. 3 in. tall.", ["It was 5 ft. 3 in. tall."]),
    ("The box weighs 5 lb. Tom lifted it.", ["The box weighs 5 lb.", "Tom lifted it."]),
    # Words that are no abbreviations still end sentences before any capitalized word.
    ("Fixed the app. Tests pass.", ["Fixed the app.", "Tests pass."]),
    ("Updated the spec. Tests pass.", ["Updated the spec.", "Tests pass."]),
    # Reference marks stay with their sentence.
    ("Tests pass.[1] The build is green.", ["Tests pass.[1]", "The build is green."]),
    ("Tests pass. [1][2] The build is green.", ["Tests pass. [1][2]", "The build is green."]),
    # Names spelled with ! or ?, and an ellipsis after them.
    ("She was a Jeopardy! champion for years.", ["She was a Jeopardy! champion for years."]),
    ("I love Yahoo! It is great.", ["I love Yahoo!", "It is great."]),
    ("Who Wants to Be a Millionaire? host Regis retired.", ["Who Wants to Be a Millionaire? host Regis retired."]),
    ("Happy! ... no one said so.", ["Happy! ... no one said so."]),
    ("Happy? ...  No one said so.", ["Happy? ...", "No one said so."]),
    # A sentence in parentheses after an end; an elided word is no quote.
    ("It ran. (How it ran is unclear.)", ["It ran.", "(How it ran is unclear.)"]),
    ("'Tis the season. Joy to the world.", ["'Tis the season.", "Joy to the world."]),
    ("The Müller GmbH & Co. KG is a firm.", ["The Müller GmbH & Co. KG is a firm."]),
    ("He works at Yahoo! Labs now. It is fun.", ["He works at Yahoo! Labs now.", "It is fun."]),
    # Initials and the pronoun I.
    ("The paper by Mary K. Jensen was cited.", ["The paper by Mary K. Jensen was cited."]),
    ("J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
    ("It was just you and I. Then it rained.", ["It was just you and I.", "Then it rained."]),
    ("The grade was a solid B. He was happy.", ["The grade was a solid B.", "He was happy."]),
    ("Ask Harry S. Truman about it.", ["Ask Harry S. Truman about it."]),
    ("Q. Who wrote it? A. Nobody knows.", ["Q. Who wrote it?", "A. Nobody knows."]),
    # Numbers, decimals, versions.
    ("Pi is about 3.14159 in value.", ["Pi is about 3.14159 in value."]),
    ("The price is $49.99. That is cheap.", ["The price is $49.99.", "That is cheap."]),
    ("Upgrade to v2.1.0 today.", ["Upgrade to v2.1.0 today."]),
    ("Go to 192.168.0.1 in your browser.", ["Go to 192.168.0.1 in your browser."]),
    ("I counted 1,000. Then I stopped.", ["I counted 1,000.", "Then I stopped."]),
    ("It ended on 12.05.2024. We celebrated.", ["It ended on 12.05.2024.", "We celebrated."]),
    ("Temperature is -3.5 today and .5 tomorrow.", ["Temperature is -3.5 today and .5 tomorrow."]),
    ("Find it at N°. 42.7.19. That is the spot.", ["Find it at N°. 42.7.19.", "That is the spot."]),
    # Files, paths, URLs, addresses, code-ish tokens.
    ("Open main.py and edit it.", ["Open main.py and edit it."]),
    ("Check src/app.ts. Then rebuild.", ["Check src/app.ts.", "Then rebuild."]),
    ("Run ./build.sh first.", ["Run ./build.sh first."]),
    ("Add it to ~/.zshrc. Restart the shell.", ["Add it to ~/.zshrc.", "Restart the shell."]),
    ("See README.md. It has details.", ["See README.md.", "It has details."]),
    (
        "Read https://docs.python.org/3/library/re.html. It explains groups.",
        ["Read https://docs.python.org/3/library/re.html.", "It explains groups."],
    ),
    ("Search https://x.org/?q=a.b!c now.", ["Search https://x.org/?q=a.b!c now."]),
    ("The site www.example.Org.io/a.b.c is up.", ["The site www.example.Org.io/a.b.c is up."]),
    ("Write to ops.team@example.co.uk. They reply fast.", ["Write to ops.team@example.co.uk.", "They reply fast."]),
    ("Mail Jane.Doe@example.com today.", ["Mail Jane.Doe@example.com today."]),
    ("The class React.Component renders it.", ["The class React.Component renders it."]),
    ("Try foo.bar() in the console.", ["Try foo.bar() in the console."]),
    ("It broke.Then it worked.", ["It broke.", "Then it worked."]),
    # Quotes and brackets.
    ('He said, "Stop here." then left.', ['He said, "Stop here." then left.']),
    ('He said, "Stop here." Then he left.', ['He said, "Stop here."', "Then he left."]),
    ("She asked, 'Are you sure?' and waited.", ["She asked, 'Are you sure?' and waited."]),
    ('"Go now. Run fast." That was the advice.', ['"Go now. Run fast."', "That was the advice."]),
    ("The results (see the appendix.) are final.", ["The results (see the appendix.) are final."]),
    ("We waited (it was late). Then we left.", ["We waited (it was late).", "Then we left."]),
    ("It was fine (as noted. Really.) in the end.", ["It was fine (as noted. Really.) in the end."]),
    ("The setting is “on by default.” Turn it off.", ["The setting is “on by default.”", "Turn it off."]),
    ("Done. (Details are in the log.)", ["Done. (Details are in the log.)"]),
    ("Don't stop. It's Jane's turn.", ["Don't stop.", "It's Jane's turn."]),
    ("Music from the 'eighties. It was loud.", ["Music from the 'eighties.", "It was loud."]),
    ("It is rock 'n' roll. Play it.", ["It is rock 'n' roll.", "Play it."]),
    ("She said 'wait. Not yet.' and sat.", ["She said 'wait. Not yet.' and sat."]),
    ("I am sad :( Next time. Maybe.", ["I am sad :( Next time.", "Maybe."]),
    ("See [the docs](https://x.io/a.b). Next.", ["See [the docs](https://x.io/a.b).", "Next."]),
    ("Run `make`. Then rest.", ["Run `make`.", "Then rest."]),
    ("It is U.S.-based. Fine.", ["It is U.S.-based.", "Fine."]),
    ("Use Node.js. It is fast.", ["Use Node.js.", "It is fast."]),
    ("**Done.** Next one.", ["**Done.**", "Next one."]),
    # Several marks, exclamations inside names.
    ("Really?! I had no idea.", ["Really?!", "I had no idea."]),
    ("Wow!!! That is fast.", ["Wow!!!", "That is fast."]),
    ("All done! 🎉 Next task.", ["All done! 🎉", "Next task."]),
    ("Tests pass. ✅\nDone.", ["Tests pass. ✅", "Done."]),
    ("Yes! 👍 see you.", ["Yes! 👍 see you."]),
    ("What?? No way.", ["What??", "No way."]),
    ("She joined Yahoo! in May.", ["She joined Yahoo! in May."]),
    ("It says Y!J on the box.", ["It says Y!J on the box."]),
    ("Stop!, she shouted. He stopped.", ["Stop!, she shouted.", "He stopped."]),
    ("! ! !", ["! ! !"]),
    # Ellipses.
    ("Wait... Where did it go?", ["Wait...", "Where did it go?"]),
    ("It was... fine, I guess.", ["It was... fine, I guess."]),
    ("Loading…done.", ["Loading…done."]),
    ("Loading… Done!", ["Loading…", "Done!"]),
    ("He paused . . . and then spoke.", ["He paused . . . and then spoke."]),
    ("He paused . . . I waited.", ["He paused . . . I waited."]),
    ("So it ends . . . . The next part begins.", ["So it ends . . . .", "The next part begins."]),
    ("It was over. . . . The rest is silence.", ["It was over.", ". . . The rest is silence."]),
    ("The text [...] was cut. Then more.", ["The text [...] was cut.", "Then more."]),
    ("...", ["..."]),
    # Inline lists.
    ("1. Install it 2. Run it", ["1. Install it", "2. Run it"]),
    ("1) Clone 2) Build 3) Test", ["1) Clone", "2) Build", "3) Test"]),
    ("1.) Clone it. 2.) Build it.", ["1.) Clone it.", "2.) Build it."]),
    ("a. Red b. Green c. Blue", ["a. Red", "b. Green", "c. Blue"]),
    ("• Fast • Cheap • Good", ["• Fast", "• Cheap", "• Good"]),
    ("Steps: 1. open 3. close", ["Steps: 1. open 3. close"]),
    ("Pick a color. a) red b) blue", ["Pick a color.", "a) red", "b) blue"]),
    ("See the notes. (a) First point. (b) Second point.", ["See the notes.", "(a) First point.", "(b) Second point."]),
    ("As noted in 2. above, it works.", ["As noted in 2. above, it works."]),
    # Newlines.
    ("Line one\nLine two", ["Line one", "Line two"]),
    ("this line is soft\nwrapped in the middle.", ["this line is soft\nwrapped in the middle."]),
    ("It was a cold \nnight in town.", ["It was a cold \nnight in town."]),
    ("apples\noranges\npears", ["apples", "oranges", "pears"]),
    ("First paragraph here\n\nsecond paragraph", ["First paragraph here", "second paragraph"]),
    ("Use these options:\nverbose mode", ["Use these options:", "verbose mode"]),
    ("Hello.\nworld is next", ["Hello.", "world is next"]),
    ("Windows lines.\r\nAre fine.\r\n", ["Windows lines.", "Are fine."]),
    ("\n3\n\nIntroduction\n\n", ["3", "Introduction"]),
    # Empty input.
    ("", []),
    ("   \n\n  \t", []),
]

JA_CASES = [
    ("今日は晴れ。明日は雨。", ["今日は晴れ。", "明日は雨。"]),
    ("本当に？うそ！", ["本当に？", "うそ！"]),
    ("それは何？ペン？", ["それは何？", "ペン？"]),
    ("「行こう！」と彼は言った。", ["「行こう！」と彼は言った。"]),
    ("彼女は「わかった。」と答えた。そして帰った。", ["彼女は「わかった。」と答えた。", "そして帰った。"]),
    ("彼は「もう帰ります。また明日。」と言った。次の日は雨だった。", ["彼は「もう帰ります。また明日。」と言った。", "次の日は雨だった。"]),
    ("「はい。」「いいえ。」", ["「はい。」", "「いいえ。」"]),
    ("「はい。」彼は笑った。", ["「はい。」", "彼は笑った。"]),
    ("『本』を読む。面白い！", ["『本』を読む。", "面白い！"]),
    ("（注：例です。）次へ。", ["（注：例です。）", "次へ。"]),
    ("値は３．５です。高い。", ["値は３．５です。", "高い。"]),
    ("率は３．２９％になる。２％台後半を目指す。", ["率は３．２９％になる。", "２％台後半を目指す。"]),
    ("価格は１，０００円です。安い！", ["価格は１，０００円です。", "安い！"]),
    ("それは、まあ、いいか。次！", ["それは、まあ、いいか。", "次！"]),
    ("すごい！と思った。本当？", ["すごい！と思った。", "本当？"]),
    ("えっ？って感じ。", ["えっ？って感じ。"]),
    ("今日は晴れです。とても暑い。", ["今日は晴れです。", "とても暑い。"]),
    ("え…本当に？", ["え…本当に？"]),
    ("待って……。行かないで。", ["待って……。", "行かないで。"]),
    ("設定ファイルは`config.yaml`です。確認してください。", ["設定ファイルは`config.yaml`です。", "確認してください。"]),
    ("https://example.jp/a.htmlを開く。閉じる。", ["https://example.jp/a.htmlを開く。", "閉じる。"]),
    ("バージョンは3.14です。v2.1.0も使えます。", ["バージョンは3.14です。", "v2.1.0も使えます。"]),
    ("ファイルを保存しました.次に進みます.", ["ファイルを保存しました.", "次に進みます."]),
    ("OKです!次に進みます。", ["OKです!", "次に進みます。"]),
    ("本当ですか!?信じられない。", ["本当ですか!?", "信じられない。"]),
    ("これはペンです。 それはマーカーです。", ["これはペンです。", "それはマーカーです。"]),
    ("ＡＢＣ．ＤＥＦ．", ["ＡＢＣ．", "ＤＥＦ．"]),
    ("Hello world. これは日本語です。", ["Hello world.", "これは日本語です。"]),
    ("これは父の\n家です。", ["これは父の\n家です。"]),
    ("概要\n本文です。", ["概要", "本文です。"]),
    ("１．準備\n２．実行", ["１．準備", "２．実行"]),
    ("\u3000字下げした段落です。次の文。", ["字下げした段落です。", "次の文。"]),
]

MD_CASES = [
    ("# Title\nBody text here.", ["# Title", "Body text here."]),
    ("## Step 1. Install\nRun it.", ["## Step 1. Install", "Run it."]),
    ("- one\n- two", ["- one", "- two"]),
    ("* star item\n+ plus item", ["* star item", "+ plus item"]),
    ("1. First\n2. Second", ["1. First", "2. Second"]),
    ("a. first\nb. second", ["a. first", "b. second"]),
    ("- an item that is\n  continued here.", ["- an item that is\n  continued here."]),
    ("2. Second step\n   continues here.", ["2. Second step\n   continues here."]),
    ("> This is a quoted line\n> that continues.", ["> This is a quoted line\n> that continues."]),
    ("> Short quote\n> Another line", ["> Short quote", "> Another line"]),
    ("Text `a. B` more. Next", ["Text `a. B` more.", "Next"]),
    ("Use ``a ` b. C`` here. Done.", ["Use ``a ` b. C`` here.", "Done."]),
    ("A stray ` tick. Then more.", ["A stray ` tick.", "Then more."]),
    ("Intro:\n\n```bash\nls -la. Really.\n```\nAfter.", ["Intro:", "```bash\nls -la. Really.\n```", "After."]),
    ("~~~\nx = 1. y\n~~~\nDone.", ["~~~\nx = 1. y\n~~~", "Done."]),
    ("````md\n```\ninner\n```\n````\nEnd.", ["````md\n```\ninner\n```\n````", "End."]),
    ("1. Step:\n\n   ```sh\n   make. all\n   ```\n2. Next", ["1. Step:", "```sh\n   make. all\n   ```", "2. Next"]),
    ("```\nunclosed. code", ["```\nunclosed. code"]),
    ("Say ```x``` inline. Ok.", ["Say ```x``` inline.", "Ok."]),
    ("Intro.\n\n    x = 1. y\n    z = 2\n\nAfter.", ["Intro.", "    x = 1. y\n    z = 2", "After."]),
    ("| a. b | c |\n|---|---|\n| 1. x | 2! Y |", ["| a. b | c |", "|---|---|", "| 1. x | 2! Y |"]),
    ("---\nText after rule", ["---", "Text after rule"]),
    ("Title\n=====\nBody.", ["Title", "=====", "Body."]),
]


def _ids(cases):
    return [text[:40] for text, _ in cases]


@pytest.mark.parametrize(("text", "expected"), EN_CASES, ids=_ids(EN_CASES))
def test_english_cases(text, expected):
    assert whole(text) == expected
    assert by_pieces(text, longest=1) == expected
    assert by_pieces(text, seed=len(text)) == expected
    check_invariants(text, expected)


@pytest.mark.parametrize(("text", "expected"), JA_CASES, ids=_ids(JA_CASES))
def test_japanese_cases(text, expected):
    assert whole(text, "ja") == expected
    assert by_pieces(text, "ja", longest=1) == expected
    assert by_pieces(text, "ja", seed=len(text)) == expected


@pytest.mark.parametrize(("text", "expected"), MD_CASES, ids=_ids(MD_CASES))
def test_markdown_cases(text, expected):
    assert whole(text) == expected
    assert by_pieces(text, longest=1) == expected
    assert by_pieces(text, seed=len(text)) == expected


def test_case_table_is_broad():
    assert len(EN_CASES) + len(JA_CASES) + len(MD_CASES) >= 150


def test_japanese_particle_join_only_in_japanese_mode():
    assert whole("これは父の\n家です。", "en") == ["これは父の", "家です。"]


# --------------------------------------------------------------------------------------------
# Streaming behaviour


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Released by the first letter of the next sentence.
        ("Hello. World", [("Hello.", 7), ("World", None)]),
        # A final period alone waits: "Hello.5" or "Hello.py" may follow.
        ("Hello.", [("Hello.", None)]),
        # A newline after an ordinary sentence end releases at once.
        ("Hello.\nworld", [("Hello.", 6), ("world", None)]),
        ("Done!\n", [("Done!", 5)]),
        # Headings and table rows end at their newline; a short line too.
        ("# Head\nx", [("# Head", 6), ("x", None)]),
        ("| a | b |\n", [("| a | b |", 9)]),
        ("features\nmore", [("features", 8), ("more", None)]),
        # A prose line waits for the next line's first letter (it may be a soft wrap).
        ("A long line\nNext", [("A long line", 12), ("Next", None)]),
        ("A long line\nnext", [("A long line\nnext", None)]),
        # After an acronym the whole next word is needed.
        ("I live in the U.K. Then I moved.", [("I live in the U.K.", 23), ("Then I moved.", None)]),
        ("See e.g. Foo", [("See e.g. Foo", None)]),
        # After a time the next word decides: a sentence starter ends it, a time zone goes on.
        ("We met at 10 a.m. The bar was shut.", [("We met at 10 a.m.", 21), ("The bar was shut.", None)]),
        ("Wake at 7 a.m. 8 a.m. is late.", [("Wake at 7 a.m.", 15), ("8 a.m. is late.", None)]),
        # Reference marks: a few characters past them show that no other mark follows.
        ("Tests pass. [1] The build is green.", [("Tests pass. [1]", 20), ("The build is green.", None)]),
        ("Happy! ... No one came.", [("Happy! ...", 11), ("No one came.", None)]),
        # An elision opens no quote, so nothing waits for a closing one.
        ("Get 'em while hot. They go fast.", [("Get 'em while hot.", 19), ("They go fast.", None)]),
        ("これです。それ", [("これです。", 5), ("それ", None)]),
        ("「はい。」と言う", [("「はい。」と言う", None)]),
        # A code block goes out when its closing fence line ends, not before.
        ("```\na. B\n```\nNext", [("```\na. B\n```", 12), ("Next", None)]),
    ],
)
def test_release_points(text, expected):
    assert release_points(text, "ja" if any(ord(c) > 0x3000 for c in text) else "en") == expected


def test_each_sentence_released_as_soon_as_certain():
    # In ordinary prose every sentence except the last is out before the next one ends.
    text = "First one here. Second one there. Third is last."
    points = release_points(text)
    assert [s for s, _ in points] == ["First one here.", "Second one there.", "Third is last."]
    assert points[0][1] == text.index("Second")
    assert points[1][1] == text.index("Third")
    assert points[2][1] is None


def test_code_block_not_released_early():
    chunker = SentenceChunker()
    assert chunker.feed("Look:\n```python\nx = 1. Y = 2\n") == ["Look:"]
    assert chunker.feed("print(x)\n``") == []
    assert chunker.feed("`") == []  # "```" could still be "````" or "```x"
    assert chunker.feed("\nAfter.") == ["```python\nx = 1. Y = 2\nprint(x)\n```"]
    assert chunker.flush() == ["After."]


def test_split_invariance_on_mixed_document():
    doc = "\n".join(text for text, _ in EN_CASES + MD_CASES) + "\n\n" + "\n".join(t for t, _ in JA_CASES)
    for lang in ("en", "ja"):
        reference = whole(doc, lang)
        check_invariants(doc, [c for c in reference if not c.startswith("    ")])
        for seed in range(6):
            assert by_pieces(doc, lang, seed=seed, longest=1 + seed * 9) == reference, (lang, seed)


def test_flush_resets_for_reuse():
    chunker = SentenceChunker()
    assert chunker.feed("One. Tw") == ["One."]
    assert chunker.pending == " Tw"
    assert chunker.flush() == ["Tw"]
    assert chunker.pending == ""
    assert chunker.feed("```\nx") == []
    assert chunker.flush() == ["```\nx"]
    assert chunker.feed("Fresh start. Ok") == ["Fresh start."]


def test_chunk_sentences_streams_lazily_and_skips_bad_pieces(caplog):
    fed = []

    def pieces():
        for piece in ["Hello. ", "World", None, ". Bye", b"x"]:
            fed.append(piece)
            yield piece

    gen = chunk_sentences(pieces())
    with caplog.at_level(logging.WARNING, logger="mlx_stream_tts.chunking"):
        assert next(gen) == "Hello."
        assert len(fed) == 2  # yielded as soon as "World" showed the end was certain
        assert list(gen) == ["World.", "Bye"]
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 2


def test_bad_arguments():
    with pytest.raises(TypeError):
        SentenceChunker().feed(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SentenceChunker(max_chars=5)
    with pytest.raises(TypeError):
        SentenceChunker(lang=None)  # type: ignore[arg-type]
    assert SentenceChunker("jpn_Jpan").lang == "ja"
    assert SentenceChunker("fr").lang == "en"


# --------------------------------------------------------------------------------------------
# Length cap


def _words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega".split()
    return " ".join(rng.choice(vocab) for _ in range(n))


def test_cap_prefers_a_strong_clause_boundary():
    first, second = _words(22, 1), _words(22, 2)
    text = f"{first}; {second} and more words here."
    assert 200 < len(text) < 300
    chunks = whole(text)
    assert chunks == [f"{first};", f"{second} and more words here."]
    assert by_pieces(text, longest=1) == chunks


def test_cap_leaves_a_long_sentence_whole_below_one_and_a_half():
    text = _words(20, 3) + ", " + _words(18, 4) + "."
    assert 200 < len(text) < 300
    assert whole(text) == [text]


def test_cap_splits_at_comma_then_conjunction_then_space():
    comma = _words(30, 5) + ", " + _words(30, 6) + "."
    chunks = whole(comma)
    assert chunks[0].endswith(",") and len(chunks[0]) <= 300
    conj = _words(30, 7) + " because " + _words(30, 8) + "."
    chunks = whole(conj)
    assert chunks[1].startswith("because ") and len(chunks[0]) <= 300
    plain = _words(120, 9)
    chunks = whole(plain)
    assert all(len(c) <= 300 for c in chunks) and len(chunks) >= 3
    assert " ".join(chunks) == plain  # split only at spaces, never inside a word


def test_cap_never_cuts_a_url_or_inline_code():
    url = "https://example.com/" + "segment/" * 30 + "end.html"
    code = "`" + " ".join(["arg"] * 20) + "`"
    text = f"{_words(25, 10)} {url} {_words(10, 11)} {code} {_words(40, 12)}."
    chunks = whole(text, max_chars=100)
    assert any(url in c for c in chunks)
    assert any(code in c for c in chunks)
    check_invariants(text, chunks)
    assert by_pieces(text, max_chars=100, seed=3) == chunks


def test_cap_on_japanese_without_spaces():
    text = "あいうえおかきくけこ" * 50 + "。"
    chunks = whole(text, "ja")
    assert all(len(c) <= 300 for c in chunks) and "".join(chunks) == text
    long_quote = "彼は「" + "とても長い話です。" * 40 + "」と言った。"
    chunks = whole(long_quote, "ja")
    assert len(chunks) > 1 and all(len(c) <= 300 for c in chunks)
    assert "".join(chunks) == long_quote
    assert chunks[0].endswith("。")  # a long quote splits at its own sentence ends


def test_long_run_on_text_loses_nothing():
    rng = random.Random(7)
    parts = []
    for _ in range(400):
        parts.append(_words(rng.randint(3, 15), rng.randint(0, 10**6)))
        parts.append(rng.choice([", ", "; ", " — ", ": ", " and ", " "]))
    text = "".join(parts) + "."
    chunks = whole(text)
    assert len(chunks) > 10
    assert all(len(c) <= 300 for c in chunks)
    check_invariants(text, chunks)
    assert by_pieces(text, seed=11, longest=40) == chunks


# --------------------------------------------------------------------------------------------
# Garbage and scale


def test_control_characters_and_odd_input_do_not_break_the_stream():
    rng = random.Random(3)
    alphabet = [chr(c) for c in range(0, 0x80)] + list("。！？「」『』（）…．、€😀│┌\u200b\u2028\ufeff")
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    for lang in ("en", "ja"):
        chunks = whole(text, lang)
        assert all(chunks) and all(len(c) <= 700 for c in chunks if not c.startswith(("```", "~~~", "    ")))
        assert nonspace("".join(chunks)) == nonspace(text)
        assert by_pieces(text, lang, seed=5, longest=50) == chunks
    for chunk in whole(text)[:200]:
        assert isinstance(speakable(chunk), str)


def test_unpunctuated_megabyte_is_bounded_and_linear():
    unit = _words(40_000, 13)  # about 250 kB without punctuation
    big = unit * 5 + " end"

    def timed(text: str) -> tuple[float, list[str]]:
        chunker, out, t0 = SentenceChunker(), [], time.perf_counter()
        for k in range(0, len(text), 97):
            out += chunker.feed(text[k : k + 97])
        return time.perf_counter() - t0, out + chunker.flush()

    t_small, small = timed(unit)
    t_big, chunks = timed(big)
    assert len(big) > 1_000_000
    assert all(len(c) <= 300 for c in chunks)
    assert nonspace("".join(chunks)) == nonspace(big)
    assert t_big < 30
    assert t_big < 8 * t_small + 0.5, (t_small, t_big)


def test_megabyte_without_spaces_is_cut_at_three_times_the_cap():
    text = "x" * 1_000_000
    chunks = by_pieces(text, seed=1, longest=4000)
    assert max(map(len, chunks)) <= 600 and "".join(chunks) == text


def test_huge_code_block_is_one_chunk():
    body = "value = compute(1.5) + 2. Next line\n" * 40_000
    text = "Before.\n```py\n" + body + "```\nAfter."
    chunks = by_pieces(text, seed=2, longest=500)
    assert chunks == ["Before.", "```py\n" + body + "```", "After."]


# --------------------------------------------------------------------------------------------
# Speakable text


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ("## Summary", "Summary"),
        ("I updated `src/app.ts` and `main.py`.", "I updated src/app.ts and main.py."),
        ("Run `pytest` now.", "Run pytest now."),
        ("Call `x = foo(bar, baz)` then stop.", "Call then stop."),
        ("Use `reversed()` here.", "Use reversed here."),
        ("See [the docs](https://example.com/docs?a=(1)) for **more** info.", "See the docs for more info."),
        ("Visit https://github.com/foo/bar. It is great.", "Visit link. It is great."),
        ("(see https://x.com/a_b)", "(see link)"),
        ("Call <https://example.com> now.", "Call link now."),
        ("![diagram](img.png) The diagram shows it.", "The diagram shows it."),
        ("| Name | Value |", "Name, Value"),
        ("|------|:-----:|", ""),
        ("| a. b | 3.14 | |", "a. b, 3.14"),
        ("- [ ] task one", "task one"),
        ("* item", "item"),
        ("1. First step.", "First step."),
        ("> A quote.", "A quote."),
        ("---", ""),
        ("***", ""),
        ("Done! 🎉✅ ┌──┐", "Done!"),
        ("<b>Bold</b> and <br/> text &amp; more", "Bold and text & more"),
        (
            "Use *emphasis* and _this_ but not snake_case_name or 2*3*4.",
            "Use emphasis and this but not snake_case_name or 2*3*4.",
        ),
        ("~~old~~ new", "old new"),
        ("**Note:** this is `important`.", "Note: this is important."),
        ("\x00\x01control\x07 chars\x1b[31m red\x1b[0m", "control chars red"),
        ("   ", ""),
        ("Text with\ttabs   and   spaces.", "Text with tabs and spaces."),
        ("Here's the code:\n```js\nlet a = 1;\n```\nThat is all.", "Here's the code: code block. That is all."),
        ("• bullet point", "bullet point"),
        ("`a[0] += 1`", ""),
        ("🎉", ""),
    ],
)
def test_speakable_english(chunk, expected):
    assert speakable(chunk) == expected


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ("「はい」と言った。", "「はい」と言った。"),
        ("詳細は https://x.jp を参照。", "詳細はリンクを参照。"),
        ("これは父の\n家です。", "これは父の家です。"),
        ("## 概要", "概要"),
        ("`pytest`を実行します。", "pytestを実行します。"),
        ("**重要**：設定を確認。", "重要：設定を確認。"),
        ("```\nprint(1)\nprint(2)\n```", "コードブロック"),
        ("```\nコード\n```", "コード"),  # a one-line block of a few words is read
    ],
)
def test_speakable_japanese(chunk, expected):
    assert speakable(chunk, "ja") == expected


def test_speakable_code_modes():
    block = "```python\nx = 1\ny = 2\n```"
    assert speakable(block) == "code block" == code_cue("en")
    assert speakable(block, "ja") == "コードブロック" == code_cue("ja")
    assert speakable(block, code="skip") == ""
    assert speakable(block, code="read") == "x = 1 y = 2"
    assert speakable("Call `x = foo(bar)` now.", code="read") == "Call x = foo(bar) now."
    assert speakable("    indented = code", code="cue") == "code block"
    with pytest.raises(ValueError):
        speakable("x", code="loud")
    with pytest.raises(TypeError):
        speakable(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ("```python\nprint(1)\n```", True),
        ("~~~\nx\n~~~", True),
        ("```\nunclosed", True),
        ("    x = 1\n    y = 2", True),
        ("```x``` is inline", False),
        ("Hello.", False),
        ("", False),
    ],
)
def test_is_code_block(chunk, expected):
    assert is_code_block(chunk) is expected


def test_chunker_and_speakable_together():
    text = (
        "# Report\n\nI fixed `parse()` in src/app.ts. See https://example.com/pr/1 for the diff.\n\n"
        "```diff\n- old\n+ new\n```\n\n| File | Lines |\n|---|---|\n| app.ts | 12 |\n\nAll done! 🎉"
    )
    chunks = by_pieces(text, seed=4)
    said = [speakable(c) for c in chunks]
    assert said == [
        "Report",
        "I fixed parse in src/app.ts.",
        "See link for the diff.",
        "code block",
        "File, Lines",
        "",
        "app.ts, 12",
        "All done!",
    ]
    assert [is_code_block(c) for c in chunks].count(True) == 1


def test_speakable_is_fast():
    chunk = "Some **bold** text with `code`, a [link](https://x.y/z) and https://a.b/c. " * 3
    t0 = time.perf_counter()
    for _ in range(2000):
        speakable(chunk)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Use `s[::-1]` here.", "Use s[::-1] here."),
        ("Use `[::-1]` here.", "Use here."),
        ("Run `npm test` now.", "Run npm test now."),
        ("Set `x = 1;` there.", "Set there."),
        ("```\nsubagent-ran\n```", "subagent-ran"),
        ("```\nx = 1\n```", "code block"),
        ("```\nline one\nline two\n```", "code block"),
    ],
)
def test_speakable_short_code_is_read(text, spoken):
    assert speakable(text, "en") == spoken

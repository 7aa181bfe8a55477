#!/usr/bin/env python3
"""Differential test data for the tokenizer: takes the fixture tokenizers,
derives variants that exercise more of tokenizer.json (string merges, added
tokens with lstrip/rstrip/single_word/normalized, Metaspace schemes, more
normalizers, pre-tokenizers and decoders), and writes, for each, the
tokenizer.json and a golden.json of Hugging Face `tokenizers` results on
seeded random texts and id lists (same format as tests/fixtures goldens).

    python3 tokenizer/hf_difftest.py OUT_DIR [N_RANDOM_TEXTS]

Then: STARRELAY_TOKENIZER_GOLDEN=OUT_DIR build/tokenizer/test_tokenizer
"""
import copy
import json
import os
import random
import sys

from tokenizers import Tokenizer

FIX = "tests/fixtures"
BASES = {
    "llama3": f"{FIX}/llama3-tiny/tokenizer.json",
    "qwen2": f"{FIX}/qwen2-tiny/tokenizer.json",
    "mistral": f"{FIX}/mistral-sp-tiny/tokenizer.json",
    "llama2": f"{FIX}/tokenizers/llama2-legacy/tokenizer.json",
    "gpt2": f"{FIX}/tokenizers/gpt2-style/tokenizer.json",
}


def load(name):
    with open(BASES[name], encoding="utf-8") as f:
        return json.load(f)


def added(tid, content, special=False, lstrip=False, rstrip=False, single_word=False,
          normalized=None):
    return {"id": tid, "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": (not special) if normalized is None else normalized,
            "special": special}


def next_id(d):
    ids = list(d["model"]["vocab"].values()) + [a["id"] for a in d["added_tokens"]]
    return max(ids) + 1


def with_extra_added(d, specs):
    d = copy.deepcopy(d)
    nid = next_id(d)
    for i, (content, kw) in enumerate(specs):
        d["added_tokens"].append(added(nid + i, content, **kw))
    return d


EXTRA = [("<mask>", dict(special=True, lstrip=True, rstrip=True)),
         ("<sep>", dict(special=True, lstrip=True)),
         ("<cls>", dict(special=True, rstrip=True)),
         ("hello world", dict(special=False)),
         ("wd", dict(special=False, single_word=True)),
         (" <tag>", dict(special=False, normalized=True)),
         ("[X]", dict(special=False, normalized=False))]

BL_DEC = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def variants():
    v = {}
    for name in BASES:
        v[name] = load(name)
    # GPT-2 as published: merges as "a b" strings.
    d = load("gpt2")
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]
    v["gpt2-strmerges"] = d
    v["gpt2-added"] = with_extra_added(load("gpt2"), EXTRA)
    v["llama3-added"] = with_extra_added(load("llama3"), EXTRA)
    # Llama 2 with normalized (not special-cased) specials, and extra added tokens.
    d = load("llama2")
    for a in d["added_tokens"]:
        a["normalized"] = True
    v["llama2-normspecial"] = d
    v["llama2-added"] = with_extra_added(load("llama2"), EXTRA)
    # Metaspace schemes and the legacy add_prefix_space form; Metaspace decoder.
    for scheme, split in (("always", True), ("never", False), ("first", True)):
        d = load("mistral")
        d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme,
                              "split": split}
        d["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme,
                        "split": split}
        v[f"mistral-{scheme}-{int(split)}"] = with_extra_added(d, EXTRA[:3])
    d = load("mistral")
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True,
                          "str_rep": "▁"}
    v["mistral-legacy"] = d
    # More normalizers over a byte-level model (every byte is in its vocab).
    d = load("qwen2")
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Lowercase"},
        {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
        {"type": "Strip", "strip_left": True, "strip_right": False}]}
    v["qwen2-nfkc-lower"] = d
    d = load("qwen2")
    d["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "NFKD"}]}
    v["qwen2-nfd"] = d
    # More pre-tokenizers.
    bl = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": False}
    for label, pre in (
            ("digits", [{"type": "Digits", "individual_digits": True},
                        {"type": "Punctuation", "behavior": "Isolated"}]),
            ("digits-contig", [{"type": "Digits", "individual_digits": False},
                               {"type": "Punctuation", "behavior": "MergedWithPrevious"}]),
            ("whitespace", [{"type": "Whitespace"}]),
            ("wsplit", [{"type": "WhitespaceSplit"},
                        {"type": "Punctuation", "behavior": "MergedWithNext"}]),
            ("split-removed", [{"type": "Split", "pattern": {"String": " "},
                                "behavior": "Removed", "invert": False}]),
            ("split-contig", [{"type": "Split", "pattern": {"Regex": "[aeiou]"},
                               "behavior": "Contiguous", "invert": False}]),
            ("split-next-inv", [{"type": "Split", "pattern": {"Regex": "\\p{L}+"},
                                 "behavior": "MergedWithNext", "invert": True}]),
            ("split-prev", [{"type": "Split", "pattern": {"Regex": "\\s"},
                             "behavior": "MergedWithPrevious", "invert": False}]),
            ("split-word", [{"type": "Split", "pattern": {"Regex": "\\w+"},
                             "behavior": "Isolated", "invert": False},
                            {"type": "Split", "pattern": {"Regex": "[^\\s\\w]|\\W\\d"},
                             "behavior": "MergedWithNext", "invert": False},
                            {"type": "Split", "pattern": {"Regex": "\\S\\s"},
                             "behavior": "Isolated", "invert": False}]),
            ("split-empty", [{"type": "Split", "pattern": {"Regex": "[aeiou]*"},
                              "behavior": "Contiguous", "invert": False},
                             {"type": "Split", "pattern": {"Regex": "x?"},
                              "behavior": "MergedWithPrevious", "invert": True}]),
            ("bytelevel-prefix", [])):
        d = load("gpt2")
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": pre + [bl]}
        v[f"gpt2-{label}"] = d
    # StripAccents, Nmt and the ByteLevel normalizer (then the pre-tokenizer
    # sees byte-level characters).
    d = load("gpt2")
    d["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFD"}, {"type": "StripAccents"}, {"type": "Nmt"}, {"type": "ByteLevel"}]}
    d["pre_tokenizer"] = {"type": "Split", "pattern": {"String": "Ġ"},
                          "behavior": "MergedWithNext", "invert": False}
    v["gpt2-bytelevel-norm"] = d
    # Unknown characters without byte fallback, fused or not.
    for fuse in (True, False):
        d = load("llama2")
        d["model"]["byte_fallback"] = False
        d["model"]["fuse_unk"] = fuse
        v[f"llama2-unk-fuse{int(fuse)}"] = d
    # Decoders: Strip with stop, Replace with a regex.
    d = load("llama2")
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"Regex": "▁+"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 2, "stop": 1}]}
    v["llama2-strip"] = d
    return v


POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 6
    + [" "] * 40 + ["  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n "]
    + list("0123456789") * 2 + ["123456", "3.14", "1,000"]
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    + ["'s", "'re", "'LL", "'d", "n't", "don't"]
    + ["hello", "world", "the", " the", "Hello", "hello world", "wd", " wd ", "awdb"]
    + ["é", "à", "ü", "ñ", "ç", "ø", "Å", "ß", "e\u0301", "n\u0303", "A\u030a",
       "a\u0302\u0323", "a\u0323\u0302", "\u1100\u1161\u11a8", "한국어", "ΣΑΣ", "İ", "ﬁ", "①",
       "²", "ＡＢＣ１２３", "Ⅷ", "㎏", "\u212b"]
    + ["你好", "世界", "日本語", "のテキスト", "Привет", "مرحبا", "हिन्दी"]
    + ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷", "❤️", "🦀", "𝔘𝔫", "ꙮ"]
    + ["\u00a0", "\u3000", "\u2009", "\u200b", "\u2028", "\u0085", "\u180e", "\u000b", "\u000c",
       "\u2581", "\u2581\u2581", "Ġ", "\ufffd", "<0x41>", "<0xE4>"]
    + ["<s>", "</s>", "<s", "<unk>", "<|endoftext|>", "<|begin_of_text|>", "<|begin_of",
       "<|eot_id|>", "<|im_start|>", "<mask>", " <mask> ", "<sep>", "<cls>", " <tag>", "<tag>",
       "[X]", " [X] "]
)

FIXED = ["", " ", "  ", "\n", "a", " a", "a ", "Hello world", " Hello world ", "<s>", " <s>",
         "<s> ", "<s>a", "a<s>", "</s></s>", "<s><s>hello", "hello <s> world", "▁", "▁▁a",
         "a\u0301", "ΣΑΣ ΟΔΟΣ", "x" * 300, "ab" * 200, " " * 50 + "a", "\n" * 20,
         "<mask>", "a <mask> b", "a<mask>b", "  <mask>  ", "<sep> x <cls> y",
         "hello world", "hello worldhello world", "a wd b", "awdb", "wd", "x <tag> y",
         "x<tag>y", "[X] [X]", "<|begin_of_text|><|begin_of_text|>", "<|endoftext|> hi"]


def texts(rng, n):
    out = list(FIXED)
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    # a long one
    out.append("".join(rng.choice(POOL) for _ in range(3000)))
    return out


def id_lists(rng, tok, d, n):
    size = tok.get_vocab_size(with_added_tokens=True)
    vocab = tok.get_vocab(with_added_tokens=True)
    byte_ids = [vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab]
    special = [a["id"] for a in d["added_tokens"]]
    lists = []
    for _ in range(n):
        k = rng.randint(1, 30)
        ids = []
        for _ in range(k):
            r = rng.random()
            if r < 0.15 and special:
                ids.append(rng.choice(special))
            elif r < 0.35 and byte_ids:
                # often a whole UTF-8 character as byte tokens
                ch = rng.choice(["é", "你", "😀", "a", "\x80"]).encode("utf-8", "surrogatepass") \
                    if rng.random() < 0.7 else bytes([rng.randrange(256)])
                cut = rng.randint(1, len(ch))
                ids.extend(byte_ids[b] if b < len(byte_ids) else byte_ids[0] for b in ch[:cut])
            else:
                ids.append(rng.randrange(size))
        lists.append(ids)
    return lists


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    for name, d in variants().items():
        rng = random.Random(name)
        tok = Tokenizer.from_str(json.dumps(d, ensure_ascii=False))
        tcases, dcases = [], []
        for t in texts(rng, n):
            for add in (True, False):
                tcases.append({"text": t, "add_special": add,
                               "ids": tok.encode(t, add_special_tokens=add).ids})
        for ids in [c["ids"] for c in tcases[:80]] + id_lists(rng, tok, d, n):
            for skip in (False, True):
                try:
                    text = tok.decode(ids, skip_special_tokens=skip)
                except BaseException:  # the reference panics on some inputs (Strip stop)
                    continue
                dcases.append({"ids": ids, "skip_special": skip, "text": text})
        dst = os.path.join(out, name)
        os.makedirs(dst, exist_ok=True)
        with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(d, f, ensure_ascii=False)
        with open(os.path.join(dst, "golden.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenize": tcases, "decode": dcases}, f, ensure_ascii=False)
        print(name, len(tcases), len(dcases), flush=True)


if __name__ == "__main__":
    main()

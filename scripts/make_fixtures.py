#!/usr/bin/env python3
"""Generate the small model/tokenizer fixtures under tests/fixtures/.

Needs torch, transformers (5.x) and tokenizers (0.2x); no network.  Everything is
deterministic (fixed seeds; the training corpus is built from this Python's own
stdlib docstrings plus a fixed multilingual list), runs on CPU in fp32.

    PYTHONUNBUFFERED=1 python3 scripts/make_fixtures.py [--out tests/fixtures]

Writes
  llama3-tiny/      LlamaForCausalLM, byte-level BPE (Llama-3 regex), llama3 rope
                    scaling, fp32 weights sharded with model.safetensors.index.json,
                    config.json in the classic form (rope_theta + rope_scaling)
  qwen2-tiny/       Qwen2ForCausalLM (qkv bias, tied embeddings), byte-level BPE
                    (Qwen2 regex, NFC), bf16 weights, config as transformers 5 writes it
  mistral-sp-tiny/  MistralForCausalLM (explicit head_dim), SentencePiece-style BPE
                    with byte fallback and Metaspace, fp16 weights
  tokenizers/llama2-legacy/  Llama-2 legacy tokenizer.json (Prepend/Replace normalizer)
  tokenizers/gpt2-style/     ByteLevel(use_regex) tokenizer, no BOS
each with golden.json (see scripts/README.md for its format).
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys

import torch
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,
                        normalizers, pre_tokenizers, processors, trainers)
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

TF_MAJOR = int(transformers.__version__.split(".")[0])

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Characters kept out of every training corpus so that byte fallback (SP) and
# single-byte tokens (byte-level) are exercised.
RARE_CHARS = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢ⅧⅨꙮ🦀🦑"
RARE_TEXT = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⅧⅨ ꙮ"

MULTI = [
    "你好，世界！这是一个测试。我们正在训练一个小型分词器，用来检查中文文本。",
    "日本語のテキストを少し書きます。東京は大きな都市です。ひらがなとカタカナ。",
    "한국어 문장도 포함합니다. 서울은 큰 도시입니다.",
    "Привет, мир! Это небольшой тест токенизатора. Москва и Санкт-Петербург.",
    "مرحبا بالعالم! هذا اختبار صغير للنص العربي.",
    "Ελληνικά: Γεια σου κόσμε. हिन्दी पाठ का उदाहरण।",
    "Ünïcödé àccents: café, naïve, façade, jalapeño, Straße, øre, Ærø, señor, crème brûlée.",
    "Emoji: 😀 😃 👍 👍🏽 👋🏿 ❤️ 👨‍👩‍👧‍👦 👩‍💻 🇫🇷 🎉 family 👨‍👩‍👧‍👦 and 👍🏽 again",
    "Numbers 0 1 2 3 42 3.14159 2718281828 1,000,000 -17 1e-9 2024-05-17 12:30",
    "def square(x):\n    return x ** 2  # square\n\nfor i in range(10):\n\tprint(i, square(i))\n",
    "int main(void) {\r\n    printf(\"hello\\n\");\r\n    return 0;\r\n}\r\n",
    "Whitespace   runs    here\t\ttabs\t and\r\nCRLF\r\nlines  \n  \n    indented\n",
    "don't we'll I'M they've she's you're it'd THEY'LL",
]

STDLIB_MODULES = [
    "abc", "argparse", "array", "ast", "base64", "bisect", "calendar", "collections",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "enum", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "hmac",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "math", "operator",
    "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched", "shlex",
    "shutil", "socket", "statistics", "string", "struct", "subprocess", "tempfile",
    "textwrap", "threading", "time", "timeit", "tokenize", "traceback", "types",
    "typing", "unittest", "uuid", "warnings", "weakref", "zipfile",
]

SYSTEM_TEXT = "You are a careful assistant. Answer in one short sentence."
RUN_CONTEXT = (
    "The river Lorn rises in the northern hills and flows south for 212 kilometres "
    "before reaching the sea at Carrow. 河流很长，鱼很多。 In late summer it can nearly "
    "dry up, but in October the salmon return.")
RUN_QUERY = "\nQuestion: How long is the river Lorn?\nAnswer:"
STAR_CONTEXT_WORDS = (
    "Star attention splits a long context into blocks. Each block is encoded on its own "
    "host together with a copy of the first block, called the anchor, which keeps the "
    "attention pattern close to the global one. Afterwards the query attends to all the "
    "blocks at once, and the partial results are merged using their softmax statistics. "
    "Le modèle reste exact pour la requête; 计算是分块的。 The cost of the first phase "
    "grows linearly with the number of blocks, and no communication is needed until the "
    "query arrives at the final host of the ring.").split(" ")
STAR_QUERY = "\nQ: anchor?"
LOGITS_TEXT = "The quick brown fox jumps over the lazy dog; 狐狸 1234 café 👍🏽"
GREEDY_TEXTS = [
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "Привет! 你好！ The answer is",
]


# --------------------------------------------------------------------------- corpus
def build_corpus():
    import importlib
    import inspect
    seen = set()
    docs = []
    for name in STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        objs = [mod] + [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]
        for o in objs:
            d = getattr(o, "__doc__", None)
            if not isinstance(d, str) or len(d) < 40:
                continue
            d = inspect.cleandoc(d)
            if d in seen:
                continue
            seen.add(d)
            docs.append(d)
    table = {ord(c): None for c in RARE_CHARS}
    docs = [d.translate(table) for d in docs]
    total, kept = 0, []
    for d in docs:
        if total > 900_000:
            break
        kept.append(d)
        total += len(d)
    corpus = kept + MULTI * 25
    return kept, corpus


def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE2UNI = bytes_to_unicode()


def special(tok_text):
    return AddedToken(tok_text, single_word=False, lstrip=False, rstrip=False,
                      normalized=False, special=True)


def tok_from_dict(d):
    return Tokenizer.from_str(json.dumps(d, ensure_ascii=False))


# ------------------------------------------------------------------------ tokenizers
def train_bytelevel(corpus, regex, vocab_size, specials, nfc=False, ignore_merges=False):
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    if regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens([special(s) for s in specials])
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = bool(ignore_merges)
    return tok_from_dict(d)


def make_llama3_tok(corpus):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    tok = train_bytelevel(corpus, LLAMA3_REGEX, 1500, specials, ignore_merges=True)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return tok


def make_qwen2_tok(corpus):
    tok = train_bytelevel(corpus, QWEN2_REGEX, 1500, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                          nfc=True, ignore_merges=False)
    # the ByteLevel flags as in Qwen2's own tokenizer.json
    d = json.loads(tok.to_str())
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False}
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False}
    return tok_from_dict(d)


def make_gpt2_tok(corpus):
    tok = train_bytelevel(corpus, None, 800, ["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_sp_bpe(corpus, vocab_size):
    """SentencePiece-style BPE: <unk>,<s>,</s> = 0,1,2, <0x00>..<0xFF> = 3..258, pieces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # train with whitespace splitting (like sentencepiece: no pieces across words)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(corpus, trainer=trainer)
    d = json.loads(tok.to_str())
    old = d["model"]["vocab"]
    for s, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2)):
        assert old[s] == i, (s, old.get(s))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for t, _ in sorted(old.items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    d["model"]["vocab"] = vocab
    d["model"]["byte_fallback"] = True
    d["model"]["fuse_unk"] = True
    d["model"]["unk_token"] = "<unk>"
    for at in d["added_tokens"]:
        at["id"] = vocab[at["content"]]
        at["normalized"] = False
        at["special"] = True
    return d


def sp_decoder():
    return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                              decoders.Fuse(), decoders.Strip(" ", 1, 0)])


def sp_template():
    return processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s>:1 $B:1",
                                         special_tokens=[("<s>", 1)])


def make_mistral_tok(sp_dict):
    d = copy.deepcopy(sp_dict)
    d["normalizer"] = None
    tok = tok_from_dict(d)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = sp_decoder()
    tok.post_processor = sp_template()
    return tok


def make_llama2_tok(sp_dict):
    d = copy.deepcopy(sp_dict)
    d["pre_tokenizer"] = None
    tok = tok_from_dict(d)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = sp_decoder()
    tok.post_processor = sp_template()
    return tok


def added_tokens_decoder(tok):
    d = json.loads(tok.to_str())
    out = {}
    for at in d["added_tokens"]:
        out[str(at["id"])] = {k: at[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                  "single_word", "special")}
    return out


# ------------------------------------------------------------------- golden (tokens)
def tokenize_texts(special_inline, corpus_sample):
    return ["", " ", "   ", "Hello world", "Hello  world  ", " leading space",
            "trailing space ", "digits 1234567 and 3.14159 and 42",
            "你好，世界！这是一个测试。", "日本語のテキスト",
            "emoji 😀👍🏽 and family 👨‍👩‍👧‍👦", "tabs\tand\nnewlines\r\nmixed",
            "don't we'll I'M they've", "ünïcödé àccents café naïve",
            "decomposed: cafe\u0301 n\u0303 A\u030a", "a" * 40,
            "def f(x):\n    return x**2  # square", special_inline, RARE_TEXT,
            "crab 🦀 and squid 🦑", corpus_sample]


def make_tokenize_cases(tok, texts):
    cases = []
    for t in texts:
        for add in (True, False):
            cases.append({"text": t, "add_special": add,
                          "ids": tok.encode(t, add_special_tokens=add).ids})
    return cases


def byte_token_ids(tok, bs, kind):
    if kind == "sp":
        return [tok.token_to_id("<0x%02X>" % b) for b in bs]
    return [tok.token_to_id(BYTE2UNI[b]) for b in bs]


def make_decode_cases(tok, tok_cases, kind, specials_ids, special_inline):
    picks = {}
    for c in tok_cases:
        picks[(c["text"], c["add_special"])] = c["ids"]
    seqs = []
    wanted = [("Hello world", True), ("Hello world", False), (" leading space", True),
              ("Hello  world  ", False), ("你好，世界！这是一个测试。", True),
              ("emoji 😀👍🏽 and family 👨‍👩‍👧‍👦", False), ("tabs\tand\nnewlines\r\nmixed", False),
              (RARE_TEXT, True), ("crab 🦀 and squid 🦑", False),
              ("decomposed: cafe\u0301 n\u0303 A\u030a", False), ("", True), ("", False)]
    for k in wanted:
        seqs.append(picks[k])
    seqs.append(picks[(special_inline, True)])
    crab = "🦀".encode("utf-8")
    prefix = tok.encode("crab", add_special_tokens=False).ids
    seqs.append(prefix + byte_token_ids(tok, crab[:2], kind))                    # cut after 2 of 4 bytes
    seqs.append(prefix + byte_token_ids(tok, crab[:3], kind))                    # cut after 3 of 4 bytes
    seqs.append(prefix + byte_token_ids(tok, crab, kind))                        # full
    seqs.append(byte_token_ids(tok, crab[:2], kind) + tok.encode(" ok", add_special_tokens=False).ids)
    seqs.append(byte_token_ids(tok, b"\x80", kind) + tok.encode("ok", add_special_tokens=False).ids)
    hello = tok.encode("Hello", add_special_tokens=False).ids
    world = tok.encode(" world", add_special_tokens=False).ids
    seqs.append(specials_ids[:1] + hello + specials_ids[-1:] + world + specials_ids[-1:])
    seqs.append(hello + specials_ids + world)
    out = []
    for ids in seqs:
        for skip in (False, True):
            out.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    return out


# -------------------------------------------------------------------- golden (model)
class Margins:
    def __init__(self):
        self.vals = []

    def add(self, logits):
        top2 = torch.topk(logits, 2).values
        self.vals.append(float(top2[0] - top2[1]))


def f32list(t):
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


@torch.no_grad()
def last_logits(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float()


@torch.no_grad()
def greedy_full(model, ids, n, eos, margins=None):
    cur, out = list(ids), []
    for _ in range(n):
        lg = last_logits(model, cur)
        if margins is not None:
            margins.add(lg)
        t = int(torch.argmax(lg))
        out.append(t)
        cur.append(t)
        if t in eos:
            break
    return out


def get_kv(cache, l):
    if hasattr(cache, "layers"):
        return cache.layers[l].keys, cache.layers[l].values
    return cache.key_cache[l], cache.value_cache[l]


def new_cache(model):
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


@torch.no_grad()
def fwd(model, ids, pos, past=None):
    past_len = 0 if past is None else past.get_seq_length()
    x = torch.tensor([ids], dtype=torch.long)
    p = torch.tensor([pos], dtype=torch.long)
    # an explicit all-ones 2-D mask: keeps transformers from reading a position gap
    # as the start of a packed sequence
    m = torch.ones((1, past_len + len(ids)), dtype=torch.long)
    if past is None:
        past = new_cache(model)
    out = model(input_ids=x, position_ids=p, attention_mask=m, past_key_values=past, use_cache=True)
    return out.logits[0].float(), out.past_key_values


@torch.no_grad()
def star_reference(model, sys_ids, ctx_ids, q_ids, B, a, n_new, eos, margins=None, checks=None):
    S, C, Q = len(sys_ids), len(ctx_ids), len(q_ids)
    L = model.config.num_hidden_layers
    blocks = [ctx_ids[i:i + B] for i in range(0, C, B)]
    anchor = blocks[0][:a]
    ks = [[] for _ in range(L)]
    vs = [[] for _ in range(L)]
    # phase 1: [system ; block 0] causally (= system KV, then block 0 against it)
    _, c0 = fwd(model, sys_ids + blocks[0], list(range(S + len(blocks[0]))))
    for l in range(L):
        k, v = get_kv(c0, l)
        ks[l].append(k.clone())
        vs[l].append(v.clone())
    for i in range(1, len(blocks)):
        blk = blocks[i]
        pos = (list(range(S)) + list(range(S, S + len(anchor)))
               + list(range(S + i * B, S + i * B + len(blk))))
        _, ci = fwd(model, sys_ids + anchor + blk, pos)
        for l in range(L):
            k, v = get_kv(ci, l)
            ks[l].append(k[:, :, -len(blk):].clone())
            vs[l].append(v[:, :, -len(blk):].clone())
        if checks is not None and i == len(blocks) - 1 and len(anchor) > 0:
            # cross-check the gapped-position pass against an incremental one:
            # [system ; anchor] contiguous into a cache, then block i with past
            _, ca = fwd(model, sys_ids + anchor, list(range(S + len(anchor))))
            _, cb = fwd(model, blk, list(range(S + i * B, S + i * B + len(blk))), past=ca)
            diff = 0.0
            for l in range(L):
                k2, v2 = get_kv(cb, l)
                diff = max(diff, float((k2[:, :, -len(blk):] - ks[l][-1]).abs().max()),
                           float((v2[:, :, -len(blk):] - vs[l][-1]).abs().max()))
            checks.append(("star gapped block KV == incremental (B=%d a=%d)" % (B, a), diff < 1e-4, diff))
    cache = new_cache(model)
    for l in range(L):
        cache.update(torch.cat(ks[l], dim=2), torch.cat(vs[l], dim=2), l)
    assert cache.get_seq_length() == S + C, (cache.get_seq_length(), S, C)
    # phase 2
    lg, cache = fwd(model, q_ids, list(range(S + C, S + C + Q)), past=cache)
    first = lg[-1]
    out = []
    cur = first
    pos = S + C + Q
    for _ in range(n_new):
        if margins is not None:
            margins.add(cur)
        t = int(torch.argmax(cur))
        out.append(t)
        if t in eos or len(out) == n_new:
            break
        lg, cache = fwd(model, [t], [pos], past=cache)
        cur = lg[-1]
        pos += 1
    return first, out


def seg_ids(tok, segments):
    """Tokenize present segments separately; add_special only for the first one."""
    res, first = [], True
    for s in segments:
        if s is None:
            res.append(None)
            continue
        res.append(tok.encode(s, add_special_tokens=first).ids)
        first = False
    return res


def star_context(tok, with_special, lo=52, hi=64):
    words = []
    for w in STAR_CONTEXT_WORDS:
        words.append(w)
        n = len(tok.encode(" ".join(words), add_special_tokens=with_special).ids)
        if n >= lo:
            break
    assert n <= hi, n
    return " ".join(words)


# ---------------------------------------------------------------------- weights/init
def init_weights(model, seed, emb_std, lin_std, head_std, bias_std):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_tokens" in name:
                p.normal_(0.0, emb_std, generator=g)
            elif "lm_head" in name:
                p.normal_(0.0, head_std, generator=g)
            elif name.endswith("bias"):
                p.normal_(0.0, bias_std, generator=g)
            elif "norm" in name:
                p.uniform_(0.8, 1.2, generator=g)
            else:
                p.normal_(0.0, lin_std, generator=g)


def round_to(model, dt):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dt).to(torch.float32))


def plant_eos(model, prompt_ids, eos_id, dt, min_step=3):
    """Make eos the argmax wherever a token r (one that greedy emits for the first
    greedy prompt) would be, by setting lm_head[eos] = f * lm_head[r]; keep the first
    choice for which greedy on that prompt stops at eos after >= min_step tokens."""
    W = model.get_output_embeddings().weight
    with torch.no_grad():
        orig = W[eos_id].clone()
        base = greedy_full(model, prompt_ids, 12, set())
        for s in range(min_step, 12):
            r = base[s]
            if r == eos_id:
                continue
            for f in (1.01, 1.03, 1.1):
                W[eos_id] = (W[r] * f).to(dt).to(torch.float32)
                out = greedy_full(model, prompt_ids, 12, {eos_id})
                if out[-1] == eos_id and len(out) > min_step:
                    return r
        W[eos_id] = orig
    return None


def llama3_inv_freq(theta, d, factor, lff, hff, orig):
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    low_wl, high_wl = orig / lff, orig / hff
    wl = 2 * math.pi / inv
    inv_l = torch.where(wl > low_wl, inv / factor, inv)
    smooth = (orig / wl - lff) / (hff - lff)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    is_med = ~(wl < high_wl) & ~(wl > low_wl)
    return torch.where(is_med, smoothed, inv_l), wl, low_wl, high_wl


def rope_kwargs(theta, scaling=None):
    if TF_MAJOR >= 5:
        rp = {"rope_type": "default", "rope_theta": theta} if scaling is None else dict(scaling, rope_theta=theta)
        return {"rope_parameters": rp}
    return {"rope_theta": theta, "rope_scaling": scaling}


def load_f32(cls, d):
    return cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


def classic_rope_config(d, theta, scaling):
    p = os.path.join(d, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    before = {k: cfg.get(k) for k in ("rope_parameters", "rope_theta", "rope_scaling")}
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = theta
    if scaling is not None:
        cfg["rope_scaling"] = dict(scaling)
    else:
        cfg.pop("rope_scaling", None)
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return before


# ------------------------------------------------------------------------- writing
def write_golden(path, golden):
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        keys = list(golden.keys())
        for i, k in enumerate(keys):
            v = golden[k]
            f.write(json.dumps(k) + ": ")
            if isinstance(v, list):
                f.write("[\n")
                for j, e in enumerate(v):
                    f.write("  " + json.dumps(e, ensure_ascii=False, allow_nan=False))
                    f.write(",\n" if j + 1 < len(v) else "\n")
                f.write("]")
            else:
                f.write(json.dumps(v, ensure_ascii=False, allow_nan=False))
            f.write(",\n" if i + 1 < len(keys) else "\n")
        f.write("}\n")


def write_tokenizer(d, tok, tcfg):
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"), pretty=True)
    tcfg = dict(tcfg)
    tcfg["added_tokens_decoder"] = added_tokens_decoder(tok)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    # reload from disk so the goldens come from the file as written
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))


def dir_size(d):
    tot = 0
    for root, _, files in os.walk(d):
        for fn in files:
            tot += os.path.getsize(os.path.join(root, fn))
    return tot


# ---------------------------------------------------------------------------- models
def build_model_fixture(name, out_dir, tok, tcfg, cls, cfg, save_dtype, eos_ids, plant_id,
                        seed, init, special_inline, corpus_sample, star, shard=None,
                        classic_rope=None, rope_check=None, checks=None):
    d = os.path.join(out_dir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    tcfg = dict(tcfg)
    specials = tcfg.pop("_specials_for_decode")
    tok = write_tokenizer(d, tok, tcfg)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    init_weights(model, seed + 1, **init)
    round_to(model, save_dtype)
    greedy_prompts = [tok.encode(t, add_special_tokens=True).ids for t in GREEDY_TEXTS]
    planted = plant_eos(model, greedy_prompts[0], plant_id, save_dtype)
    ref_ids = tok.encode(LOGITS_TEXT, add_special_tokens=True).ids
    pre = last_logits(model, ref_ids)
    model.to(save_dtype)
    kw = {}
    if shard:
        kw["max_shard_size"] = shard
    model.save_pretrained(d, **kw)
    rope_before = None
    if classic_rope is not None:
        rope_before = classic_rope_config(d, *classic_rope)
    model = load_f32(cls, d)
    post = last_logits(model, ref_ids)
    diff = float((pre - post).abs().max())
    checks.append((name + ": reloaded model == built model", diff < 1e-4, diff))
    if rope_check is not None:
        ok, msg = rope_check(model)
        checks.append((name + ": rope " + msg, ok, None))
    if shard:
        checks.append((name + ": sharded with index",
                       os.path.exists(os.path.join(d, "model.safetensors.index.json")), None))

    margins = Margins()
    texts = tokenize_texts(special_inline, corpus_sample)
    golden = {"meta": {}, "tokenize": make_tokenize_cases(tok, texts)}
    sids = [tok.token_to_id(s) for s in specials]
    golden["decode"] = make_decode_cases(tok, golden["tokenize"],
                                         "bytelevel" if cls is not MistralForCausalLM else "sp",
                                         sids, special_inline)

    lg = last_logits(model, ref_ids)
    margins.add(lg)
    golden["logits"] = {"ids": ref_ids, "last_logits": f32list(lg)}
    top2 = torch.topk(lg, 2).values
    stats = {"logit_std": float(lg.std()), "top1_margin": float(top2[0] - top2[1])}

    golden["greedy"] = []
    for p in greedy_prompts:
        golden["greedy"].append({"ids": p, "max_new_tokens": 12,
                                 "output_ids": greedy_full(model, p, 12, eos_ids, margins)})
    eos_hit = any(g["output_ids"][-1] in eos_ids for g in golden["greedy"])

    golden["run"] = []
    for sys_t, ctx_t, q_t in ((None, None, RUN_QUERY), (None, RUN_CONTEXT, RUN_QUERY),
                              (SYSTEM_TEXT, RUN_CONTEXT, RUN_QUERY), (SYSTEM_TEXT, None, RUN_QUERY)):
        segs = seg_ids(tok, [sys_t, ctx_t, q_t])
        prompt = [i for s in segs if s is not None for i in s]
        fl = last_logits(model, prompt)
        golden["run"].append({"system": sys_t, "context": ctx_t, "query": q_t, "max_tokens": 8,
                              "prompt_ids": prompt, "first_logits": f32list(fl),
                              "output_ids": greedy_full(model, prompt, 8, eos_ids, margins)})

    if star:
        golden["star"] = []
        for sys_t in (None, SYSTEM_TEXT):
            ctx_t = star_context(tok, sys_t is None)
            sys_ids, ctx_ids, q_ids = seg_ids(tok, [sys_t, ctx_t, STAR_QUERY])
            sys_ids = sys_ids or []
            C = len(ctx_ids)
            b3 = -(-C // 3)
            combos = [(16, 16, False), (16, 0, False), (10, 4, False), (b3, b3, False),
                      (C, C, True), (-(-C // 2), -(-C // 2), True)]
            full = sys_ids + ctx_ids + q_ids
            full_first = last_logits(model, full)
            full_out = greedy_full(model, full, 8, eos_ids)
            for B, a, exact in combos:
                first, outs = star_reference(model, sys_ids, ctx_ids, q_ids, B, a, 8, eos_ids,
                                             margins, checks)
                if exact:
                    dd = float((first - full_first).abs().max())
                    checks.append(("%s: star(B=%d,a=%d,S=%d) == full forward" % (name, B, a, len(sys_ids)),
                                   dd < 1e-4 and outs == full_out, dd))
                golden["star"].append({"system": sys_t, "context": ctx_t, "query": STAR_QUERY,
                                       "system_ids": sys_ids, "context_ids": ctx_ids,
                                       "query_ids": q_ids, "block_size": B, "anchor_size": a,
                                       "equals_full": exact,
                                       "first_logits": f32list(first), "output_ids": outs})
        # star with anchors must actually differ from full attention somewhere
        nonexact = [s for s in golden["star"] if not s["equals_full"]]
        maxdiff = 0.0
        for s in nonexact:
            full = s["system_ids"] + s["context_ids"] + s["query_ids"]
            maxdiff = max(maxdiff, float((torch.tensor(s["first_logits"]) - last_logits(model, full)).abs().max()))
        checks.append((name + ": approximate star cases differ from full", maxdiff > 1e-3, maxdiff))

    stats["min_argmax_margin"] = min(margins.vals)
    stats["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    stats["eos_planted_copy_of"] = planted
    stats["greedy_hits_eos"] = eos_hit
    golden["meta"] = {"generator": "scripts/make_fixtures.py", "torch": torch.__version__,
                      "transformers": transformers.__version__,
                      "eos_token_ids": sorted(eos_ids), "rope_config_as_written_by_transformers": rope_before,
                      **stats}
    write_golden(os.path.join(d, "golden.json"), golden)
    print("[%s] vocab=%d logit_std=%.3f top1_margin=%.4f min_argmax_margin=%.5f eos_planted(r=%s) greedy_hits_eos=%s size=%dKB"
          % (name, stats["vocab_size"], stats["logit_std"], stats["top1_margin"],
             stats["min_argmax_margin"], planted, eos_hit, dir_size(d) // 1024))
    for fn in sorted(os.listdir(d)):
        print("    %-36s %8d" % (fn, os.path.getsize(os.path.join(d, fn))))
    if rope_before is not None:
        print("    config rope as written by transformers:", json.dumps(rope_before))
    return d


def tokenizer_only_fixture(name, out_dir, tok, tcfg, kind, special_inline, corpus_sample):
    d = os.path.join(out_dir, "tokenizers", name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    tcfg = dict(tcfg)
    specials = tcfg.pop("_specials_for_decode")
    tok = write_tokenizer(d, tok, tcfg)
    golden = {"tokenize": make_tokenize_cases(tok, tokenize_texts(special_inline, corpus_sample))}
    golden["decode"] = make_decode_cases(tok, golden["tokenize"], kind,
                                         [tok.token_to_id(s) for s in specials], special_inline)
    write_golden(os.path.join(d, "golden.json"), golden)
    print("[tokenizers/%s] vocab=%d size=%dKB" % (name, tok.get_vocab_size(with_added_tokens=True),
                                                  dir_size(d) // 1024))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    torch.set_num_threads(4)
    torch.backends.cuda.matmul.allow_tf32 = False
    print("torch", torch.__version__, "transformers", transformers.__version__,
          "tokenizers", __import__("tokenizers").__version__, "python", sys.version.split()[0])
    docs, corpus = build_corpus()
    doc_text = "\n\n".join(docs)
    corpus_sample = doc_text[3000:3500]
    print("corpus: %d docs, %d chars (+%d multilingual lines)" % (len(docs), len(doc_text), len(MULTI) * 25))
    for c in RARE_CHARS:
        assert all(c not in s for s in corpus), c
    checks = []

    # ---------------- llama3-tiny
    tok = make_llama3_tok(corpus)
    V = tok.get_vocab_size(with_added_tokens=True)
    bos, eot, eot_id = (tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>"),
                        tok.token_to_id("<|eot_id|>"))
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024, "rope_type": "llama3"}
    theta = 10000.0
    hd = 16
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, bos_token_id=bos, eos_token_id=[eot, eot_id],
                      tie_word_embeddings=False, hidden_act="silu", attention_bias=False,
                      mlp_bias=False, **rope_kwargs(theta, scaling))

    def llama3_rope_check(model):
        want, wl, lo, hi = llama3_inv_freq(theta, hd, 8.0, 1.0, 4.0, 1024)
        got = model.model.rotary_emb.inv_freq.float()
        bands = (int((wl < hi).sum()), int(((wl >= hi) & (wl <= lo)).sum()), int((wl > lo).sum()))
        ok = torch.allclose(got, want, rtol=1e-6, atol=0) and all(b > 0 for b in bands)
        return ok, "llama3 inv_freq matches (bands high/mid/low = %s, rope_type=%s)" % (
            bands, getattr(model.model.rotary_emb, "rope_type", "?"))

    build_model_fixture(
        "llama3-tiny", args.out, tok,
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<|begin_of_text|>",
         "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
         "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192,
         "tokenizer_class": "PreTrainedTokenizerFast",
         "_specials_for_decode": ["<|begin_of_text|>", "<|eot_id|>"]},
        LlamaForCausalLM, cfg, torch.float32, {eot, eot_id}, eot_id, 1000,
        dict(emb_std=1.0, lin_std=0.15, head_std=0.3, bias_std=0.0),
        "before<|eot_id|>after <|begin_of_text|>x<|end_of_text|>", corpus_sample, True,
        shard="400KB", classic_rope=(theta, scaling), rope_check=llama3_rope_check, checks=checks)

    # ---------------- qwen2-tiny
    tok = make_qwen2_tok(corpus)
    V = tok.get_vocab_size(with_added_tokens=True)
    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    cfg = Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                      rms_norm_eps=1e-6, bos_token_id=eot, eos_token_id=im_end,
                      tie_word_embeddings=True, use_sliding_window=False, max_window_layers=2,
                      hidden_act="silu", **rope_kwargs(1000000.0))
    build_model_fixture(
        "qwen2-tiny", args.out, tok,
        {"add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
         "clean_up_tokenization_spaces": False, "model_max_length": 32768,
         "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
         "_specials_for_decode": ["<|im_start|>", "<|im_end|>"]},
        Qwen2ForCausalLM, cfg, torch.bfloat16, {im_end}, im_end, 2000,
        dict(emb_std=0.6, lin_std=0.15, head_std=0.3, bias_std=0.5),
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", corpus_sample, True, checks=checks)

    # ---------------- mistral-sp-tiny
    sp = train_sp_bpe(corpus, 1000)
    tok = make_mistral_tok(sp)
    V = tok.get_vocab_size(with_added_tokens=True)
    cfg = MistralConfig(vocab_size=V, hidden_size=64, intermediate_size=144, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        max_position_embeddings=32768, rms_norm_eps=1e-5, bos_token_id=1,
                        eos_token_id=2, tie_word_embeddings=False, sliding_window=None,
                        hidden_act="silu", **rope_kwargs(10000.0))
    build_model_fixture(
        "mistral-sp-tiny", args.out, tok,
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "legacy": False, "clean_up_tokenization_spaces": False,
         "model_max_length": 32768, "spaces_between_special_tokens": False,
         "tokenizer_class": "LlamaTokenizer", "_specials_for_decode": ["<s>", "</s>"]},
        MistralForCausalLM, cfg, torch.float16, {2}, 2, 3000,
        dict(emb_std=1.0, lin_std=0.15, head_std=0.3, bias_std=0.0),
        "<s> inside</s>end", corpus_sample, False, classic_rope=(10000.0, None), checks=checks)

    # ---------------- tokenizer-only
    tokenizer_only_fixture(
        "llama2-legacy", args.out, make_llama2_tok(sp),
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "legacy": True, "clean_up_tokenization_spaces": False,
         "model_max_length": 4096, "tokenizer_class": "LlamaTokenizer",
         "_specials_for_decode": ["<s>", "</s>"]},
        "sp", "<s> inside</s>end", corpus_sample)
    tokenizer_only_fixture(
        "gpt2-style", args.out, make_gpt2_tok(corpus),
        {"add_bos_token": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>", "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer",
         "_specials_for_decode": ["<|endoftext|>"]},
        "bytelevel", "a<|endoftext|>b", corpus_sample)

    print("checks:")
    bad = 0
    for what, ok, val in checks:
        print("  %s %s%s" % ("ok  " if ok else "FAIL", what, "" if val is None else " (%.3g)" % val))
        bad += not ok
    print("total size of %s: %d KB" % (args.out, dir_size(args.out) // 1024))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

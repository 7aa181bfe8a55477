#!/usr/bin/env python3
"""Synthetic long-document retrieval tasks in the spirit of RULER (pure stdlib).

One generator serves the training script (scripts/train_retrieval_model.py), the
accuracy benchmark (bench/accuracy.py) and the CI slice (tests/accuracy_slice.py),
so the model is evaluated on exactly the distribution it was trained on, with seeds
that training never uses (training seeds start with "train:", everything else uses
other prefixes).

An instance is a dict:

    task     one of TASKS
    system   optional system prompt (None in the canonical evaluation format)
    context  the long document, with facts planted in filler text
    query    the question, e.g. "Question: What is the code for the blue door? Answer:"
    answer   the expected answer value, e.g. "48213"
    target   what the model is trained to emit (after a space, then EOS): the answer,
             except for vt, where it is the chain down to the value, e.g.
             "BRUMO = QXKTA = 48213" (each step is then a one-hop look-up)

Tasks
    single    one fact planted in the filler; ask for its value
    multikey  2-8 facts of the same form with different keys; ask for one
    kv        many key/value records (scattered or as one JSON-like block); ask one key
    vt        variable tracking: "VAR QXKTA = 48213." ... "VAR BRUMO = QXKTA." ...;
              ask for the value of the last variable of a 1- or 2-hop chain, with
              distractor chains around it; the model answers with the chain,
              "BRUMO = QXKTA = 48213", and is scored on the value after the last "="

The document filler comes from word lists and sentence templates in this file and
in scripts/retrieval_words.txt (frequent words of Python's docstrings), in several
styles: template prose, random words, RULER's repeated "noise" sentences, mixed.

Lengths are given in characters; a caller that wants a length in tokens passes
n_chars = tokens * chars_per_token for its tokenizer (see calibrate helpers in the
benchmark).  Run this file to print a sample instance.
"""
import json
import os
import random

TASKS = ("single", "multikey", "kv", "vt")
STYLES = ("prose", "words", "noise", "mixed")

HERE = os.path.dirname(os.path.abspath(__file__))

COLORS = ("red blue green yellow black white orange purple brown grey silver golden pink "
          "violet amber crimson scarlet teal ivory bronze copper indigo olive cyan maroon "
          "navy beige coral emerald turquoise").split()
OBJECTS = ("door gate box chest safe locker cabinet drawer vault trunk case crate bag "
           "window shed garage cellar tower bridge boat car bicycle lamp clock piano "
           "book lock suitcase wallet phone laptop tablet camera radio envelope barn "
           "house cottage tent caravan").split()
THINGS = ("locker ticket phone room seat account order badge passport invoice parcel "
          "membership library card").split()
NAMES = ("Alice Bruno Clara Dmitri Elena Farid Grace Hiro Ines Jonas Kira Liam Maya "
         "Nadia Oscar Priya Quentin Rosa Samir Tess Umar Vera Wyatt Xenia Yusuf Zoe "
         "Anton Bianca Carlos Daria Emil Fiona Gustav Hana Igor Julia Kofi Lena Marco "
         "Nina Otto Paula Rafael Sofia Tomas Ulla Viktor Wanda Yara Zane").split()
TOWNS = ("Ashford Brayton Carrow Dunmore Eastwick Fenwood Glenrock Harlow Ivybridge "
         "Kelso Lorn Millbrook Northam Oakridge Pellow Queensbury Redfield Stanmore "
         "Thornby Upton Valehurst Westmere Yarrow Zennor").split()
NOUNS = ("river valley town harvest apples bees letters weather roads people village "
         "garden orchard field forest hill mountain lake sea shore harbour market "
         "bridge mill farm school church library museum station road path street "
         "house window door roof wall fire kitchen table chair book letter story "
         "song music painting picture lamp candle clock bell ship boat wagon horse "
         "dog cat bird owl fox wolf deer sheep goat cow fish bread cheese wine milk "
         "honey grain wheat corn barley rain snow wind storm cloud sun moon star sky "
         "night morning evening winter summer spring autumn year season festival "
         "king queen farmer miller baker teacher student doctor sailor merchant "
         "traveller stranger neighbour child family friend crowd council letter "
         "map journey road lantern coat boot hat basket rope stone tree leaf flower "
         "meadow stream well pond island coast cliff cave tower castle wall gate").split()
ADJS = ("small long old young quiet busy bright dark cold warm wet dry green golden "
        "heavy light narrow wide deep shallow early late distant nearby gentle rough "
        "calm wild ancient modern simple careful patient happy tired hungry proud "
        "strange familiar empty crowded soft loud slow quick rich poor clean dusty "
        "sunny windy cloudy frozen broken hidden open northern southern eastern "
        "western little great fine plain steep lonely pleasant humble").split()
VERBS = ("held grew kept wrote carried built found brought sold bought watched "
         "remembered crossed followed visited opened closed painted repaired gathered "
         "planted harvested counted washed cleaned carved baked cooked read sang "
         "mended sent received left reached climbed walked sailed rode fed named "
         "studied measured described noticed collected shared stored").split()
INTRANS = ("waited slept laughed arrived rested wandered travelled worked listened "
           "returned disappeared stayed gathered rose fell settled shone changed "
           "vanished stopped continued").split()
ADVS = ("slowly quickly quietly carefully often rarely early late together again "
        "always never gently suddenly patiently happily").split()
PREPS = ("near beside behind across along beyond above below inside outside through "
         "around under over past toward").split()
TIMES = ("in the morning", "at night", "every spring", "in the autumn", "after the rain",
         "before the harvest", "during the winter", "on market day", "at dawn",
         "in the evening", "once a year", "every week", "long ago", "last summer")
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
         "There and back again.").split(". ")
SYSTEMS = ("You answer questions about the document.",
           "You are a helpful assistant. Read the document and answer the question.",
           "Answer the question using the text below.",
           "You are a careful reader. Reply with the value only.",
           "Read carefully; the answer is in the document.")
SYLLABLES = ("ba be bi bo bu da de di do du fa fe fi fo ka ke ki ko ku la le li lo lu "
             "ma me mi mo mu na ne ni no nu pa pe pi po ra re ri ro ru sa se si so ta "
             "te ti to tu va ve vi vo za zo").split()
CONSONANTS = "BCDFGHJKLMNPQRSTVWXYZ"

_WORDS = None


def general_words():
    global _WORDS
    if _WORDS is None:
        with open(os.path.join(HERE, "retrieval_words.txt"), encoding="utf-8") as f:
            _WORDS = [w.strip() for w in f if w.strip()]
    return _WORDS


# ----------------------------------------------------------------------- filler
def _cap(s):
    return s[:1].upper() + s[1:]


def prose_sentence(rng):
    n1, n2, n3 = rng.choice(NOUNS), rng.choice(NOUNS), rng.choice(NOUNS)
    a1, a2 = rng.choice(ADJS), rng.choice(ADJS)
    k = rng.randrange(12)
    if k == 0:
        s = "the %s %s %s the %s %s the %s" % (a1, n1, rng.choice(VERBS), n2, rng.choice(PREPS), n3)
    elif k == 1:
        s = "%s %s the %s %s %s" % (rng.choice(NAMES), rng.choice(VERBS), a1, n1, rng.choice(TIMES))
    elif k == 2:
        s = "in %s the %s of %s was %s and %s" % (rng.randrange(1700, 2030), n1, rng.choice(TOWNS), a1, a2)
    elif k == 3:
        s = "the %s %s %s, and the %s %s %s the %s" % (n1, rng.choice(INTRANS), rng.choice(ADVS), n2,
                                                     rng.choice(VERBS), rng.choice(("the", "a", "every")), n3)
    elif k == 4:
        s = "%s the %s there was a %s %s that nobody %s" % (rng.choice(PREPS), n1, a1, n2, rng.choice(VERBS))
    elif k == 5:
        s = "%s and %s %s %s to %s %s" % (rng.choice(NAMES), rng.choice(NAMES), rng.choice(INTRANS),
                                        rng.choice(ADVS), rng.choice(TOWNS), rng.choice(TIMES))
    elif k == 6:
        s = "people say the %s is %s %s" % (n1, a1, rng.choice(TIMES))
    elif k == 7:
        s = "the %s %s about the %s %s" % (n1, rng.choice(("wrote", "spoke", "sang", "dreamed", "asked")), a1, n2)
    elif k == 8:
        s = "%s %s were %s in %s, but the %s were %s" % (rng.choice(("many", "some", "few", "most", "the")),
                                                       n1 + "s" if not n1.endswith("s") else n1, a1,
                                                       rng.choice(TOWNS), n2 + "s" if not n2.endswith("s") else n2, a2)
    elif k == 9:
        s = "%s the %s %s, the %s %s %s" % (rng.choice(("when", "after", "before", "while")), n1,
                                          rng.choice(INTRANS), n2, rng.choice(INTRANS), rng.choice(ADVS))
    elif k == 10:
        s = "a %s %s %s %s the %s of %s" % (a1, n1, rng.choice(INTRANS), rng.choice(PREPS), n2, rng.choice(TOWNS))
    else:
        s = "%s %s %d %s %s the %s" % (rng.choice(NAMES), rng.choice(("counted", "carried", "sold", "found", "kept")),
                                       rng.randrange(2, 90), n1 + ("s" if not n1.endswith("s") else ""),
                                       rng.choice(PREPS), n2)
    return _cap(s) + "."


def words_sentence(rng, vocab):
    n = rng.randint(5, 28)
    return _cap(" ".join(rng.choice(vocab) for _ in range(n))) + "."


def noise_sentence(rng, state):
    s = NOISE[state[0] % len(NOISE)]
    state[0] += 1
    return s if s.endswith(".") else s + "."


def make_filler(rng, n_chars, style):
    """Paragraphs (lists of sentences) of about n_chars characters in total."""
    if style == "words" or style == "mixed":
        gw = general_words()
        k = rng.choice((20, 40, 80, 200, 600, len(gw)))
        pool = rng.sample(gw, min(k, len(gw))) + rng.sample(NOUNS, 10) + ["the", "a", "and", "of"] * 2
    noise_state = [0]
    paras, total = [], 0
    while total < n_chars:
        sents = []
        n = rng.randint(3, 8)
        pstyle = style if style != "mixed" else rng.choice(("prose", "words", "prose"))
        for _ in range(n):
            if pstyle == "prose":
                s = prose_sentence(rng)
            elif pstyle == "words":
                s = words_sentence(rng, pool)
            else:
                s = noise_sentence(rng, noise_state)
            sents.append(s)
            total += len(s) + 1
            if total >= n_chars:
                break
        paras.append(sents)
        total += 1
    return paras


# ---------------------------------------------------------------------- values
def rand_number(rng):
    n = rng.choice((4, 5, 5, 6, 6, 7, 7))
    return str(rng.randrange(10 ** (n - 1), 10 ** n))


def rand_word(rng):
    return _cap("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))))


def rand_var(rng):
    return "".join(rng.choice(CONSONANTS) for _ in range(5))


# ---------------------------------------------------------------------- needles
# Each template: key maker, fact (key, value) -> sentence, question(key) -> text, value maker
def _code_key(rng):
    return (rng.choice(COLORS), rng.choice(OBJECTS))


def _magic_key(rng):
    return (rng.choice((rng.choice(NOUNS), rng.choice(general_words()[200:]), rng.choice(ADJS) + "-" + rng.choice(NOUNS))),)


def _person_key(rng):
    return (rng.choice(NAMES), rng.choice(THINGS))


def _pw_key(rng):
    return (rng.choice(ADJS), rng.choice(OBJECTS))


TEMPLATES = {
    "code": (_code_key, rand_number,
             lambda k, v: "The code for the %s %s is %s." % (k[0], k[1], v),
             lambda k: "What is the code for the %s %s?" % k),
    "magic": (_magic_key, rand_number,
              lambda k, v: "One of the special magic numbers for %s is: %s." % (k[0], v),
              lambda k: "What is the special magic number for %s?" % k),
    "person": (_person_key, rand_number,
               lambda k, v: "%s's %s number is %s." % (k[0], k[1], v),
               lambda k: "What is %s's %s number?" % k),
    "password": (_pw_key, rand_word,
                 lambda k, v: "The password for the %s %s is %s." % (k[0], k[1], v),
                 lambda k: "What is the password for the %s %s?" % k),
}
TEMPLATE_NAMES = ("code", "magic", "person", "password")


def _distinct_keys(rng, maker, n):
    keys, seen = [], set()
    while len(keys) < n:
        k = maker(rng)
        if k not in seen:
            seen.add(k)
            keys.append(k)
    return keys


# ---------------------------------------------------------------------- assembly
def _insert(paras, items, rng, depths=None, ordered=False):
    """Insert sentences (items) into the paragraphs at random sentence boundaries.
    depths: optional fractions in [0, 1] for each item.  ordered: keep items' order."""
    flat = []
    for pi, p in enumerate(paras):
        for s in p:
            flat.append((pi, s))
    n = len(flat)
    if depths is None:
        pos = [rng.randint(0, n) for _ in items]
    else:
        pos = [min(n, max(0, int(round(d * n)))) for d in depths]
    if ordered:
        pos.sort()
    order = sorted(range(len(items)), key=lambda i: (pos[i], i))
    out = []
    j = 0
    for idx in range(n + 1):
        while j < len(order) and pos[order[j]] == idx:
            it = items[order[j]]
            pi = flat[idx][0] if idx < n else (flat[-1][0] if n else 0)
            if isinstance(it, tuple):      # a whole paragraph of its own
                out.append(("para", it[0]))
            else:
                out.append((pi, it))
            j += 1
        if idx < n:
            out.append(flat[idx])
    # rebuild paragraphs
    text_paras, cur, cur_id = [], [], None
    for pid, s in out:
        if pid == "para":
            if cur:
                text_paras.append(" ".join(cur))
                cur = []
            text_paras.append(s)
            cur_id = None
            continue
        if cur_id is not None and pid != cur_id and cur:
            text_paras.append(" ".join(cur))
            cur = []
        cur.append(s)
        cur_id = pid
    if cur:
        text_paras.append(" ".join(cur))
    return "\n\n".join(text_paras)


QUERY_FORMATS = {
    "qa": "Question: %s Answer:",
    "qa_nl": "\nQuestion: %s\nAnswer:",
    "bare": "%s",
    "q_a": "Q: %s\nA:",
}


def make_instance(rng, task, n_chars, style=None, query_format="qa", system=None,
                  context_end="\n", depths=None, vt_hops=(1, 2)):
    """One instance of `task` with a context of about n_chars characters.

    rng: random.Random (or a seed string/int).  style: filler style (random if None).
    query_format: key of QUERY_FORMATS.  system: optional system prompt.
    depths: optional list of fractions for the planted fact(s) (single: 1 value).
    vt_hops: the choices of chain length for vt (0 = ask the variable holding the number)."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    if task not in TASKS:
        raise ValueError("unknown task %r" % (task,))
    if style is None:
        style = rng.choices(STYLES, weights=(0.4, 0.35, 0.1, 0.15))[0]
    items, ordered, item_depths = [], False, depths
    target = None
    if task == "single" or task == "multikey":
        tname = rng.choice(TEMPLATE_NAMES)
        maker, vmaker, fact, question = TEMPLATES[tname]
        n = 1 if task == "single" else rng.randint(2, 8)
        keys = _distinct_keys(rng, maker, n)
        values = [vmaker(rng) for _ in keys]
        items = [fact(k, v) for k, v in zip(keys, values)]
        ask = rng.randrange(n)
        q, answer = question(keys[ask]), values[ask]
        if depths is not None and task == "multikey" and len(depths) == 1:
            # put the asked fact at that depth, the others anywhere
            item_depths = [rng.random() for _ in keys]
            item_depths[ask] = depths[0]
        needle_chars = sum(len(s) + 1 for s in items)
    elif task == "kv":
        n = max(4, min(60, int(n_chars * 0.25 / 36)))
        n = rng.randint(max(2, n // 2), n)
        keys = _distinct_keys(rng, lambda r: "%s-%s" % (r.choice(ADJS), r.choice(NOUNS)), n)
        values = [rand_number(rng) for _ in keys]
        ask = rng.randrange(n)
        q, answer = 'What is the value of the key "%s"?' % keys[ask], values[ask]
        if rng.random() < 0.5:
            items = ['The key "%s" has the value %s.' % (k, v) for k, v in zip(keys, values)]
            if depths is not None and len(depths) == 1:
                item_depths = [rng.random() for _ in keys]
                item_depths[ask] = depths[0]
        else:
            body = ", ".join('"%s": %s' % (k, v) for k, v in zip(keys, values))
            items = [("Records: {" + body + "}",)]
            if depths is not None:
                item_depths = [depths[0]]
        needle_chars = sum(len(s if isinstance(s, str) else s[0]) + 2 for s in items)
    else:  # vt
        hops = rng.choice(vt_hops)
        nchains = rng.randint(2, 4)
        names = _distinct_keys(rng, rand_var, nchains * (hops + 1))
        chains, vals = [], []
        for c in range(nchains):
            vs = names[c * (hops + 1):(c + 1) * (hops + 1)]
            v = rand_number(rng)
            stmts = ["VAR %s = %s." % (vs[0], v)]
            for h in range(1, hops + 1):
                stmts.append("VAR %s = %s." % (vs[h], vs[h - 1]))
            chains.append((vs, stmts))
            vals.append(v)
        # each chain's statements in order, chains interleaved at random
        per_chain_pos = []
        for c in range(nchains):
            ps = sorted(rng.random() for _ in chains[c][1])
            per_chain_pos.append(ps)
        if depths is not None and len(depths) == len(chains[0][1]):
            per_chain_pos[0] = sorted(depths)
        items, item_depths = [], []
        for c in range(nchains):
            items.extend(chains[c][1])
            item_depths.extend(per_chain_pos[c])
        q, answer = "What is the value of the variable %s?" % chains[0][0][-1], vals[0]
        target = " = ".join(list(reversed(chains[0][0])) + [answer])
        needle_chars = sum(len(s) + 1 for s in items)
    paras = make_filler(rng, max(0, n_chars - needle_chars), style)
    context = _insert(paras, items, rng, depths=item_depths, ordered=ordered) + context_end
    query = QUERY_FORMATS[query_format] % q
    return {"task": task, "style": style, "system": system, "context": context,
            "query": query, "answer": answer, "target": target or answer}


def training_instance(rng, task, n_chars, vt_hops=(1, 2)):
    """Training distribution: random style, query format, system prompt, context end."""
    fmt = rng.choices(("qa", "qa_nl", "bare", "q_a"), weights=(0.45, 0.2, 0.2, 0.15))[0]
    system = rng.choice(SYSTEMS) if rng.random() < 0.35 else None
    end = rng.choices(("\n", "", "\n\n", " "), weights=(0.55, 0.2, 0.15, 0.1))[0]
    return make_instance(rng, task, n_chars, query_format=fmt, system=system, context_end=end,
                         vt_hops=vt_hops)


def eval_instance(split, task, index, n_chars, **kw):
    """Canonical held-out instance: seed '<split>:<task>:<index>' (split must not be
    'train'), query format 'qa', no system prompt, context ends with a newline."""
    if split.startswith("train"):
        raise ValueError("evaluation split must not be a training split")
    rng = random.Random("%s:%s:%d" % (split, task, index))
    return make_instance(rng, task, n_chars, **kw)


def answer_matches(generated, answer):
    """Exact match of the value: the text after the last '=' (vt answers with its chain,
    "Y = X = 48213"), stripped of whitespace and a trailing period."""
    g = generated.rsplit("=", 1)[-1].strip()
    if g.endswith("."):
        g = g[:-1].rstrip()
    return g == answer


if __name__ == "__main__":
    import sys
    task = sys.argv[1] if len(sys.argv) > 1 else "single"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
    inst = eval_instance("sample", task, 0, n)
    print(inst["context"])
    print("----")
    print(json.dumps({k: inst[k] for k in ("task", "style", "query", "answer", "target")}, indent=1))

"""generate_ids against an independent reference: full recompute, one row at a time, plain-Python rules."""

import pytest
import torch

from fusion.document import Document
from fusion.inference.generate import Generation, generate_documents, generate_ids
from fusion.vocab import Vocab

from .conftest import bias_logits, make_model

N = 6  # tokens per image: small so images fit in short runs
VOCAB = Vocab.build(40, 24)


def image_spans_ok(ids: list[int], v: Vocab, n: int, start_in_image: int | None = None) -> list[bool]:
    """Walk an output; assert every image is exactly n codes then eoi. Returns per-token 'inside an image'."""
    inside, left, flags = start_in_image is not None, n - (start_in_image or 0), []
    for t in ids:
        flags.append(inside)
        if inside:
            if left:
                assert v.is_image_id(t), (ids, t)
                left -= 1
            else:
                assert t == v.eoi_id, ids
                inside = False
        else:
            assert not v.is_image_id(t) and t != v.eoi_id, ids
            if t == v.boi_id:
                inside, left = True, n
    return flags


def reference(model, prompt: list[int], *, n: int, max_new: int, mode: str, cfg_scale: float = 1.0,
              form: str = "probs") -> list[int]:
    """Greedy, full recompute, the modality rules spelt out per token (what generate_ids must reproduce)."""
    v = model.cfg.vocab
    seq, out = list(prompt), []
    boi_pos = max((i for i, t in enumerate(seq) if t == v.boi_id), default=-1)
    inside = boi_pos > max((i for i, t in enumerate(seq) if t == v.eoi_id), default=-1)
    if mode == "image" and not inside:  # boi forced at once
        seq.append(v.boi_id)
        out.append(v.boi_id)
        boi_pos, inside = len(seq) - 1, True
    uncond = [v.bos_id] + (seq[boi_pos:] if inside else [])  # the prompt without its conditioning
    left = n - (len(seq) - boi_pos - 1) if inside else 0
    images = {"text": 0, "image": 1, "mixed": 10**9}[mode]
    text_ids = [i for i in range(v.text_start, v.text_start + v.text_count)] + [v.eos_id]
    image_ids = list(range(v.image_start, v.image_start + v.image_count))
    with torch.no_grad():
        for step in range(max_new):
            logits = model(torch.tensor([seq], dtype=torch.long))[0, -1].double()
            if inside:
                allowed = image_ids if left else [v.eoi_id]
            else:
                allowed = text_ids + ([v.boi_id] if images > 0 and max_new - step >= n + 2 else [])
            if inside and cfg_scale != 1.0:
                u = model(torch.tensor([uncond], dtype=torch.long))[0, -1].double()
                if form == "logits":
                    logits = u + cfg_scale * (logits - u)
                else:  # mix the probabilities over the allowed ids; a token whose mixed mass is <= 0 is out
                    idx = torch.tensor(allowed)
                    pu, pc = u[idx].softmax(-1), logits[idx].softmax(-1)
                    mixed = pu + cfg_scale * (pc - pu)
                    logits = torch.full_like(u, float("-inf"))
                    logits[idx] = torch.where(mixed > 0, mixed.clamp_min(1e-300).log(), float("-inf"))
            tok = max(allowed, key=lambda i: logits[i].item())
            seq.append(tok)
            uncond.append(tok)
            out.append(tok)
            if inside:
                if tok == v.eoi_id:
                    inside, images = False, images - 1
                    if images == 0:
                        break
                else:
                    left -= 1
            elif tok == v.boi_id:
                inside, left = True, n
            elif tok == v.eos_id:
                break
    return out


def prompts(seed: int, lengths=(3, 7, 5)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([VOCAB.bos_id]), torch.randint(VOCAB.text_start, VOCAB.text_start + 40, (n - 1,),
                                                                     generator=g)]) for n in lengths]


def test_image_mode_gives_exactly_n_codes_then_eoi():
    model = make_model(VOCAB)
    out = generate_ids(model, prompts(0), max_new_tokens=N + 1, tokens_per_image=N, mode="image", temperature=1.0,
                       seed=3)
    for ids in out:
        assert len(ids) == N + 2 and ids[0] == VOCAB.boi_id and ids[-1] == VOCAB.eoi_id
        assert bool(VOCAB.image_id_mask(ids[1:-1]).all())
    # the image ends the row even when the budget has room for more
    out = generate_ids(model, prompts(0), max_new_tokens=3 * N, tokens_per_image=N, mode="image", seed=3)
    assert all(len(ids) == N + 2 for ids in out)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_guidance_never_takes_a_forced_eoi_away(temperature):
    """The unconditional copy likes eoi far more than the conditional one: mixed over the whole vocabulary, eoi's
    guided probability went below 0 at scale 3 where eoi is the only id allowed, and rows ended with pad."""
    model = make_model(VOCAB, seed=2)
    bias = torch.zeros(VOCAB.size)
    bias[VOCAB.eoi_id] = 12.0

    def uncond_likes_eoi(module, inputs, out):  # rows [cond..., uncond...] of one guided batch
        return torch.cat([out[: out.shape[0] // 2], out[out.shape[0] // 2:] + bias]) if out.shape[0] > 3 else out

    hook = model.lm_head.register_forward_hook(uncond_likes_eoi)
    try:
        out = generate_ids(model, prompts(2), max_new_tokens=N + 1, tokens_per_image=N, mode="image",
                           temperature=temperature, guidance_scale=3.0, guidance_form="probs", seed=0)
    finally:
        hook.remove()
    for ids in out:
        assert ids.tolist()[-1] == VOCAB.eoi_id and len(ids) == N + 2
        image_spans_ok(ids.tolist(), VOCAB, N)


def test_a_row_left_nothing_to_sample_is_an_error_not_a_pad():
    model = make_model(VOCAB, seed=2)
    hook = bias_logits(model, list(range(VOCAB.image_start, VOCAB.image_start + VOCAB.image_count)), float("-inf"))
    try:  # every image code banned by a hook: an image row has nothing it may emit
        with pytest.raises(FloatingPointError, match="nothing was left to sample"):
            generate_ids(model, prompts(3), max_new_tokens=N + 1, tokens_per_image=N, mode="image", seed=0)
    finally:
        hook.remove()


@pytest.mark.parametrize("mode,cfg_scale,form", [("mixed", 1.0, "probs"), ("text", 1.0, "probs"),
                                                 ("image", 3.0, "probs"), ("image", 3.0, "logits"),
                                                 ("mixed", 2.0, "probs"), ("mixed", 2.0, "logits")])
def test_kv_cache_batch_equals_full_recompute_per_row(mode, cfg_scale, form):
    model = make_model(VOCAB, seed=1)
    hook = bias_logits(model, [VOCAB.boi_id], 2.0)  # make images frequent enough to matter
    try:
        ps = prompts(1)
        ps.append(torch.cat([ps[0], torch.tensor([VOCAB.boi_id]), VOCAB.image_ids(torch.tensor([5, 9]))])) \
            if mode != "text" else None
        got = generate_ids(model, ps, max_new_tokens=24, tokens_per_image=N, mode=mode, temperature=0.0,
                           guidance_scale=cfg_scale, guidance_form=form)
        for p, ids in zip(ps, got, strict=True):
            assert ids.tolist() == reference(model, p.tolist(), n=N, max_new=24, mode=mode, cfg_scale=cfg_scale,
                                             form=form)
    finally:
        hook.remove()
    if mode == "mixed":
        assert any(VOCAB.boi_id in ids.tolist() for ids in got[:-1])  # the test exercised image starts


def test_rows_in_different_modalities_at_the_same_step():
    model = make_model(VOCAB, seed=2)
    hook = bias_logits(model, [VOCAB.eos_id], -20.0)  # rows keep going
    try:
        text_row = prompts(2, (4,))[0]
        image_row = torch.cat([text_row, torch.tensor([VOCAB.boi_id]), VOCAB.image_ids(torch.tensor([1, 2, 3]))])
        out = generate_ids(model, [text_row, image_row], max_new_tokens=12, tokens_per_image=N, mode="mixed",
                           temperature=1.0, seed=0)
    finally:
        hook.remove()
    in_text = image_spans_ok(out[0].tolist(), VOCAB, N)
    in_image = image_spans_ok(out[1].tolist(), VOCAB, N, start_in_image=3)
    assert not in_text[0] and in_image[0]  # step 0: one row samples text while the other writes codes
    assert out[1][N - 3] == VOCAB.eoi_id and bool(VOCAB.image_id_mask(out[1][:N - 3]).all())


def test_mixed_sampling_keeps_spans_exact_and_never_starts_an_unfinishable_image():
    model = make_model(VOCAB, seed=3)
    hook = bias_logits(model, [VOCAB.boi_id], 6.0)  # boi whenever allowed
    try:
        out = generate_ids(model, prompts(3) * 2, max_new_tokens=40, tokens_per_image=N, mode="mixed",
                           temperature=1.5, top_k=10, seed=1)
        for ids in out:
            image_spans_ok(ids.tolist(), VOCAB, N)
            assert (ids == VOCAB.boi_id).sum() >= 2
        for budget, images in ((N + 1, 0), (N + 2, 1)):  # an image needs boi + N codes + eoi
            out = generate_ids(model, prompts(3), max_new_tokens=budget, tokens_per_image=N, mode="mixed",
                               temperature=0.0)
            for ids in out:
                image_spans_ok(ids.tolist(), VOCAB, N)
                assert int((ids == VOCAB.boi_id).sum()) == images and len(ids) <= budget
    finally:
        hook.remove()


def test_seed_reproduces_and_text_mode_never_emits_image_ids():
    model = make_model(VOCAB, seed=4)
    kw = dict(max_new_tokens=16, tokens_per_image=N, mode="text", temperature=2.0, top_p=0.95,
              repetition_penalty=1.3)
    a, b, c = (generate_ids(model, prompts(4), seed=s, **kw) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a, c, strict=True))
    for ids in a:
        assert not bool(VOCAB.image_id_mask(ids).any()) and VOCAB.boi_id not in ids.tolist()
        assert VOCAB.eos_id not in ids[:-1].tolist()  # eos only ever ends a row


def sampled_reference(model, prompt: list[int], *, seed: int, temperature: float, max_new: int) -> list[int]:
    """Text mode sampled by hand: full recompute, fp64 softmax, and this row's own Exp(1) stream from ``seed``."""
    v = model.cfg.vocab
    allowed = torch.zeros(v.size, dtype=torch.bool)
    allowed[v.text_start:v.text_start + v.text_count] = True
    allowed[[*v.special_ids]] = False
    allowed[v.eos_id] = True
    g, seq, out = torch.Generator().manual_seed(seed), list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            noise = torch.empty(v.size).exponential_(generator=g)
            logits = model(torch.tensor([seq]))[0, -1].double().masked_fill(~allowed, float("-inf"))
            tok = int(((logits / temperature).softmax(-1) / noise.double()).argmax())
            seq.append(tok)
            out.append(tok)
            if tok == v.eos_id:
                break
    return out


def test_each_row_samples_from_its_own_seeded_stream():
    """seed=s gives every row the stream torch.Generator().manual_seed(s), whatever the batch around it."""
    model = make_model(VOCAB, seed=7)
    hook = bias_logits(model, [VOCAB.eos_id], -30.0)  # rows run the whole budget
    try:
        ps = prompts(7, (3, 6, 4))
        kw = dict(max_new_tokens=10, tokens_per_image=N, mode="text", temperature=0.1)  # flat random logits: low T
        want = {(i, s): sampled_reference(model, ps[i].tolist(), seed=s, temperature=0.1, max_new=10)
                for i in range(3) for s in (11, 12)}
        assert len({tuple(w) for w in want.values()}) == 6  # the prompts and the seeds all matter
        assert [t.tolist() for t in generate_ids(model, ps, seed=11, **kw)] == [want[i, 11] for i in range(3)]
        got = generate_ids(model, [ps[2], ps[0]], seed=[12, torch.Generator().manual_seed(11)], **kw)
        assert [t.tolist() for t in got] == [want[2, 12], want[0, 11]]
        got = generate_ids(model, ps[1:2], seed=11, num_return_sequences=2, **kw)  # sample k: seed + k
        assert [t.tolist() for t in got] == [want[1, 11], want[1, 12]]
    finally:
        hook.remove()


def test_a_stop_string_cuts_the_document_and_its_ids_and_ends_the_row(tokenizer):
    """Stop strings are found once, in the stream: the Document's text and the recorded ids both end with the token
    that completed the stop; the row ends there (its budget was larger)."""
    model = make_model(tokenizer.vocab, seed=5)
    prompts = [Document.of("a red"), Document.of("a small blue")]
    kw = dict(mode="text", max_new_tokens=40, temperature=1.0, seed=[4, 9])
    full = Generation()
    whole = generate_documents(model, tokenizer, prompts, record=full, **kw)
    text = "".join(whole[0].texts)
    stop = text[len(text) // 2:len(text) // 2 + 2]  # a string the first row writes midway
    cut = Generation()
    docs = generate_documents(model, tokenizer, prompts, record=cut, stop_strings=[stop], **kw)
    for b, doc in enumerate(docs):
        got, want = "".join(doc.texts), "".join(whole[b].texts)
        end = want.find(stop)
        assert got == (want if end < 0 else want[:end + len(stop)])
        ids = cut.ids[b]
        text_of = lambda i: tokenizer.decode_text([t for t in i if t != tokenizer.vocab.eos_id])  # noqa: E731
        assert full.ids[b][:len(ids)] == ids and text_of(ids) == got
        if end >= 0:  # the last id completes the stop: one id fewer does not hold it
            assert stop not in text_of(ids[:-1]) and len(ids) < len(full.ids[b])
    assert stop in "".join(docs[0].texts)


def test_hf_chameleon_greedy_parity(tmp_path):
    pytest.importorskip("transformers")
    from fusion.interop.hf_chameleon import convert_hf_chameleon
    from fusion.model.transformer import Transformer

    from ..model.chameleon import IMAGE_START, N_IMAGE, hf_model

    hf = hf_model(seed=0)
    hf.save_pretrained(tmp_path / "hf")
    ours = Transformer.from_pretrained(convert_hf_chameleon(tmp_path / "hf", tmp_path / "fusion"))
    v = ours.cfg.vocab
    g = torch.Generator().manual_seed(1)
    prompt = torch.cat([torch.tensor([0]), torch.randint(IMAGE_START + N_IMAGE, 250, (9,), generator=g)])
    got = generate_ids(ours, [prompt], max_new_tokens=20, tokens_per_image=64, mode="text",
                       temperature=0.0)[0]
    # HF masks image codes itself; fusion's text mode also masks the control ids, so HF suppresses those too.
    with torch.no_grad():
        want = hf.generate(prompt[None], max_new_tokens=20, do_sample=False,
                           suppress_tokens=[v.pad_id, v.bos_id, v.boi_id, v.eoi_id])[0, len(prompt):]
    assert len(got) == 20 and got.tolist() == want.tolist()


def test_bad_inputs_are_refused():
    model = make_model(VOCAB, max_seq_len=32)
    p = prompts(6)
    kw = dict(tokens_per_image=N, temperature=0.0)
    with pytest.raises(ValueError, match="context of 32"):
        generate_ids(model, [torch.ones(30, dtype=torch.long)], max_new_tokens=4, **kw)
    with pytest.raises(ValueError, match="cannot finish the image"):
        generate_ids(model, p, max_new_tokens=N, mode="image", **kw)
    open_image = torch.cat([p[0], torch.tensor([VOCAB.boi_id]), VOCAB.image_ids(torch.tensor([0]))])
    with pytest.raises(ValueError, match="ends inside an image"):
        generate_ids(model, [open_image], max_new_tokens=8, mode="text", **kw)
    with pytest.raises(ValueError, match="malformed image span"):
        generate_ids(model, [torch.cat([open_image, torch.tensor([VOCAB.text_start])])], max_new_tokens=8, **kw)
    with pytest.raises(ValueError, match="guidance_scale"):
        generate_ids(model, p, max_new_tokens=8, mode="image", guidance_scale=-1.0, **kw)
    with pytest.raises(ValueError, match="mode"):
        generate_ids(model, p, max_new_tokens=8, mode="video", **kw)
    with pytest.raises(ValueError, match="vocabulary"):
        generate_ids(model, [torch.tensor([VOCAB.size])], max_new_tokens=8, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(model, p, max_new_tokens=0, **kw)
    with pytest.raises(TypeError, match="1-D integer"):
        generate_ids(model, [torch.ones(2, 3, dtype=torch.long)], max_new_tokens=4, **kw)


def test_three_way_guidance_drops_text_then_images_as_chameleon():
    model = make_model(VOCAB, seed=6)
    v = VOCAB
    image = torch.cat([torch.tensor([v.boi_id]), v.image_ids(torch.arange(N)), torch.tensor([v.eoi_id])])
    text = prompts(6, (4,))[0]
    prompt = torch.cat([text, image, torch.tensor([v.text_start + 3])])
    rows = {"full": prompt, "image_only": torch.cat([text[:1], image]), "uncond": text[:1]}
    with torch.no_grad():
        last = {k: model(torch.cat([r, torch.tensor([v.boi_id])])[None])[0, -1].double() for k, r in rows.items()}
    for form, space in (("logits", lambda x: x), ("probs", lambda x: x.softmax(-1))):
        got = generate_ids(model, [prompt], max_new_tokens=N + 1, tokens_per_image=N, mode="image", temperature=0.0,
                           guidance_scale=2.5, image_guidance_scale=1.5, guidance_form=form)[0]
        s = {k: space(x) for k, x in last.items()}
        mixed = s["uncond"] + 1.5 * (s["image_only"] - s["uncond"]) + 2.5 * (s["full"] - s["image_only"])
        want = v.image_start + mixed[v.image_start:v.image_start + v.image_count].argmax()
        assert got[:2].tolist() == [v.boi_id, int(want)], form

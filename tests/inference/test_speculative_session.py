"""Speculative decoding inside a session: greedy equals plain greedy token for token, the cache holds exactly the
accepted sequence, and a row's samples do not depend on its batch. The model runs in float64, so that the
rounding differences between a one-token pass and a W-token pass (another matmul shape) cannot flip a near-tie."""

import pytest
import torch

from fusion.inference.generate import complete_config, generate_ids, open_session
from fusion.vocab import Vocab

from .conftest import bias_logits, make_model

N = 6
VOCAB = Vocab.build(40, 24)


def prompts(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = [torch.cat([torch.tensor([VOCAB.bos_id]), torch.randint(VOCAB.text_start, VOCAB.text_start + 40, (n,),
                                                                     generator=g)]) for n in (3, 6, 4)]
    half_open = torch.cat([text[0], torch.tensor([VOCAB.boi_id]), VOCAB.image_ids(torch.tensor([5, 9, 2]))])
    return text + [half_open]


@pytest.fixture
def model():
    """The tiny random model in float64, with boi favoured so that text rows open images mid-run."""
    m = make_model(VOCAB, seed=1).double()
    hook = bias_logits(m, [VOCAB.boi_id], 3.0)
    yield m
    hook.remove()


@pytest.mark.parametrize("kw", [dict(mode="mixed"), dict(mode="image"), dict(mode="mixed", guidance_scale=2.0),
                                dict(mode="image", guidance_scale=2.5, image_guidance_scale=1.5),
                                dict(mode="mixed", guidance_scale=3.0, guidance_form="logits"),
                                dict(mode="mixed", repetition_penalty=1.3)])
@pytest.mark.parametrize("window", [3, N + 1])
def test_greedy_speculative_is_greedy_plain_token_for_token(model, kw, window):
    """Mixed batches (text rows beside image rows, and a prompt that leaves an image half open)."""
    common = dict(max_new_tokens=30, tokens_per_image=N, do_sample=False, **kw)
    plain = generate_ids(model, prompts(0), speculative=False, **common)
    fast = generate_ids(model, prompts(0), speculative=True, speculative_window=window, **common)
    assert [f.tolist() for f in fast] == [p.tolist() for p in plain]
    if kw["mode"] == "mixed":
        assert sum(int((p == VOCAB.eoi_id).sum()) for p in plain) >= 3  # images were written, and closed


def run_session(model, poison: bool = False, **kw):
    """Drive a speculative session by hand: per pass, the LM head's logits, each row's cache length before the
    pass and its tokens emitted after it. ``poison`` writes 1e4 into every cache slot at or past a row's length
    after each pass (1e4, not NaN: 0 x NaN would poison the sums even where attention gives weight 0)."""
    config = complete_config(model, prompts(1), N, None, dict(mode="mixed", max_new_tokens=40, speculative=True,
                                                                speculative_window=5, temperature=1.0, **kw))
    logits, passes = [], []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: logits.append(out.detach().clone()))
    try:
        session = open_session(model, prompts(1), config, tokens_per_image=N, seed=[11, 12, 13, 14], compile=False)
        B = session.B
        passes.append((None, logits[-1], session.state.n_out[:B].clone()))  # the prefill: each row's last position
        over = False
        while not over:
            before = session.cache.seqlens.clone()
            session.step()
            passes.append((before, logits[-1], session.state.n_out[:B].clone()))
            if poison:
                keys = torch.arange(session.cache.max_len + 1)
                stale = keys[None, :] >= session.cache.seqlens[:, None]  # [rows, slots]
                for buf in session.cache.k + session.cache.v:
                    buf.masked_fill_(stale[:, None, :, None], 1e4)
            over = session.collect()[1]
    finally:
        hook.remove()
    outs = [session.prefix[b] + session.state.out[b, :int(session.state.n_out[b])].tolist() for b in range(session.B)]
    return session, outs, passes


@pytest.mark.parametrize("kw", [dict(), dict(guidance_scale=2.0)])
def test_cached_window_logits_equal_a_full_recompute_and_nothing_stale_is_read(model, kw):
    session, outs, passes = run_session(model, **kw)
    B, rows = session.B, session.prompts
    emitted, partial = torch.zeros(B, dtype=torch.long), 0
    for before, out_logits, n_out in passes:
        new = n_out - emitted
        partial += int(((new > 1) & (new < 5)).sum())
        for r, prompt in enumerate(rows):
            b = r % B
            seq = torch.cat([prompt, torch.tensor(outs[b][len(session.prefix[b]):], dtype=torch.long)])
            with torch.no_grad():
                full = model(seq[None])[0]
            for i in range(int(new[b])):  # the logits slot i gave predicted the token at position before + i + 1
                got = out_logits[r, i] if out_logits.dim() == 3 else out_logits[r]
                pos = int(before[r]) + i if out_logits.dim() == 3 else len(prompt) + int(emitted[b]) - 1
                torch.testing.assert_close(got.double(), full[pos].double(), rtol=0, atol=1e-4)
        emitted = n_out.clone()
    assert partial > 0  # windows were cut short by rejections: rejected positions left stale K/V behind
    assert run_session(model, poison=True, **kw)[1] == outs


def test_a_rows_speculative_samples_do_not_depend_on_its_batch(model):
    """Each row draws a fixed amount of its own stream per pass, set by its own mode."""
    kw = dict(max_new_tokens=30, tokens_per_image=N, mode="mixed", temperature=1.0, top_k=10, speculative=True,
              speculative_window=4)
    ps, seeds = prompts(2), [21, 22, 23, 24]
    batch = generate_ids(model, ps, seed=seeds, **kw)
    alone = [generate_ids(model, [p], seed=[s], **kw)[0] for p, s in zip(ps, seeds, strict=True)]
    assert [b.tolist() for b in batch] == [a.tolist() for a in alone]
    backwards = generate_ids(model, ps[::-1], seed=seeds[::-1], **kw)
    assert [b.tolist() for b in backwards] == [a.tolist() for a in alone[::-1]]
    assert sum(int((b == VOCAB.eoi_id).sum()) for b in batch) >= 2


def test_window_buffers_cover_the_codebook_only(model):
    config = complete_config(model, prompts(0), N, None, dict(mode="image", speculative=True, speculative_window=4))
    session = open_session(model, prompts(0), config, tokens_per_image=N, seed=0, compile=False)
    B, C = session.B, VOCAB.image_count
    assert session.window.q.shape == session.window.noise.shape == (B, 3, C)
    assert session.noise.codes.shape == (B, 4, C) and session.noise.uniform.shape == (B, 4)

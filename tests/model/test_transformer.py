import pytest
import torch
from safetensors.torch import load_file, save_file

from fusion.interop.hf_chameleon import released_vocab
from fusion.kernels.doc_runs import run_positions
from fusion.model.config import MODEL_PRESETS, ModelConfig
from fusion.model.transformer import Transformer
from fusion.vocab import Vocab

from .conftest import make_model

# ----------------------------------------------------------------- config


def test_config_round_trips_through_dict_and_rejects_bad_values():
    vocab = Vocab.build(40, 24)
    cfg = ModelConfig.preset("tiny", vocab, swin_norm=True)
    assert cfg.swin_norm and cfg.n_kv_heads == 2 and cfg.head_dim == cfg.dim // cfg.n_heads
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge", vocab)
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.replace(n_kv_heads=3)
    with pytest.raises(ValueError, match="divisible"):
        cfg.replace(dim=130)


@pytest.mark.parametrize("name, lo, hi", [("chameleon-7b", 6.9e9, 7.2e9), ("chameleon-34b", 33.5e9, 35e9)])
def test_chameleon_presets_have_the_published_sizes(name, lo, hi):
    vocab = released_vocab()
    with torch.device("meta"):
        model = Transformer(ModelConfig.preset(name, vocab))
    assert lo < model.num_params() < hi
    assert set(MODEL_PRESETS) >= {"tiny", "small", "1b", "chameleon-7b", "chameleon-34b"}


def test_flops_per_token_is_6n_plus_attention(model):
    cfg = model.cfg
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert model.num_params(exclude_embedding=True) == matmul + norms
    assert model.flops_per_token(32) == 6 * (matmul + norms) + 12 * cfg.n_layers * cfg.dim * 32


# ----------------------------------------------------------------- forward


def test_doc_positions_restart_at_each_boundary():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert run_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_packed_documents_equal_separate_runs(model):
    torch.manual_seed(1)
    a, b, c = (torch.randint(0, model.cfg.vocab.size, (1, n)) for n in (5, 7, 12))
    packed = torch.cat([torch.cat([a, b], 1), c], 0)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7, [3] * 12])
    with torch.no_grad():
        got = model(packed, doc_ids=doc_ids)
        want = torch.cat([torch.cat([model(a), model(b)], 1), model(c)], 0)
        unmasked = model(packed)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[0, 5:], want[0, 5:], atol=1e-3)  # the mask does something


def test_bad_inputs_raise(model):
    V, T = model.cfg.vocab.size, model.cfg.max_seq_len
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, T + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 69\)"):
        model(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="must lie in"):
        model(torch.tensor([[-1, 2]]))
    for shape in ((4,), (1, 2, 3)):
        with pytest.raises(ValueError, match=r"\[B, T\]"):
            model(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="doc_ids"):
        model(torch.zeros(1, 4, dtype=torch.long), doc_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        model.loss(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))


# ----------------------------------------------------------------- loss


def test_loss_matches_fp64_hand_computation():
    model = make_model(z_loss_weight=0.1)
    vocab = model.cfg.vocab
    torch.manual_seed(2)
    ids = torch.randint(0, vocab.size, (2, 16))
    targets = torch.randint(0, vocab.size, (2, 16))
    targets[0, :3] = -100
    targets[1, 4:8] = vocab.image_start + torch.arange(4)  # make sure both kinds are present
    out = model.loss(ids, targets)

    with torch.no_grad():
        logits = model(ids).double().reshape(-1, vocab.size)
    t = targets.reshape(-1)
    valid = t != -100
    lse = torch.logsumexp(logits[valid], -1)
    ce = lse - logits[valid].gather(1, t[valid, None]).squeeze(1)
    is_image = (t[valid] >= vocab.image_start) & (t[valid] < vocab.image_start + vocab.image_count)
    want = {"ce": ce.mean(), "z_loss": (lse ** 2).mean(), "ce_text": ce[~is_image].mean(),
            "ce_image": ce[is_image].mean()}
    want["loss"] = want["ce"] + 0.1 * want["z_loss"]
    for key, value in want.items():
        torch.testing.assert_close(getattr(out, key).double(), value, atol=1e-5, rtol=1e-5, msg=key)
    assert (int(out.n_text), int(out.n_image)) == (int((~is_image).sum()), int(is_image.sum()))
    assert int(out.n_image) >= 4


def test_loss_with_an_empty_split_reports_zero_not_nan(model):
    vocab = model.cfg.vocab
    ids = torch.randint(0, vocab.size, (1, 8))
    targets = torch.randint(vocab.text_start, vocab.text_start + vocab.text_count, (1, 8))
    with torch.no_grad():
        out = model.loss(ids, targets)
        none = model.loss(ids, torch.full_like(targets, -100))
    assert int(out.n_image) == 0 and float(out.ce_image) == 0.0
    assert float(out.ce_text) == pytest.approx(float(out.ce))
    assert float(none.loss) == 0.0 and int(none.n_text) == 0


def test_tiny_preset_overfits_fixed_sequences():
    vocab = Vocab.build(40, 24)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("tiny", vocab, n_layers=2))
    data = torch.randint(0, vocab.size, (4, 33))
    ids, targets = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(200):
        out = model.loss(ids, targets)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    assert out.ce.item() < 0.05, out.ce.item()


# ----------------------------------------------------------------- save / load


@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, tie):
    model = make_model(tie_embeddings=tie, swin_norm=not tie)
    model.save_pretrained(tmp_path)
    loaded = Transformer.from_pretrained(tmp_path)
    assert loaded.cfg == model.cfg
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert (loaded.lm_head.weight is loaded.embed.weight) == tie
    ids = torch.randint(0, model.cfg.vocab.size, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded.eval()(ids))
    assert Transformer.from_pretrained(tmp_path, dtype=torch.bfloat16).embed.weight.dtype == torch.bfloat16


def _edit_weights(path, edit):
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("layers.1.attn.k_norm.bias"), r"missing \['layers.1.attn.k_norm.bias'\]"),
    (lambda s: s.update(extra=torch.zeros(2)), r"unexpected \['extra'\]"),
    (lambda s: s.update({"norm.weight": torch.zeros(3)}), r"norm.weight: \(3,\) != \(64,\)"),
    (lambda s: s.update({"norm.weight": s["norm.weight"].half()}), r"norm.weight: torch.float16"),
])
def test_loading_mismatched_weights_names_the_tensors(tmp_path, model, edit, pattern):
    model.save_pretrained(tmp_path)
    _edit_weights(tmp_path / "model.safetensors", edit)
    with pytest.raises(ValueError, match=pattern):
        Transformer.from_pretrained(tmp_path)


def test_dropout_is_active_only_in_training():
    model = make_model(dropout=0.5)
    ids = torch.randint(0, model.cfg.vocab.size, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))
        model.train()
        assert not torch.equal(model(ids), model(ids))

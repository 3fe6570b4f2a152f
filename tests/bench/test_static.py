"""Every Triton kernel compiles for sm_80 and sm_90 in the specialisations dispatch launches, and fits.

The compiles run in clean subprocesses (``fusion.bench.static_report``): TRITON_INTERPRET unset, an empty cache.
Attention at the presets' head dims 64 (1b) and 128 with GQA groups of 8 (chameleon-34b: the general, unspecialised
group loop), causal with and without packed documents (register allocation differs: both have spilled); decode
for a step, a speculative window and a prefill at head dims 32 (tiny) and 128; the widest preset for the row-wise
ops. The full matrix (every preset and dtype) is ``fusion bench static``.
"""

import pytest

from fusion.bench.static_cases import specs
from fusion.bench.static_report import ARCHS

TARGETS = (80, 90)
ONLY = [  # (spec filter) groups compiled by the one report below
    {"op": ["attention"], "preset": ["1b", "chameleon-34b"], "dtype": ["bf16"], "variant": ["causal", "causal+docs"]},
    {"op": ["decode_attention"], "preset": ["tiny", "chameleon-34b"], "dtype": ["bf16"]},
    {"op": ["rms_norm", "rope", "swiglu", "linear_cross_entropy"], "preset": ["chameleon-34b"], "dtype": ["bf16"]},
]
KERNELS = {"attention._fwd_kernel", "attention._bwd_dkdv_kernel", "attention._bwd_dq_kernel",
           "decode._split_kernel", "decode._combine_kernel", "rmsnorm._fwd_kernel", "rmsnorm._bwd_kernel",
           "rope._rope_kernel", "swiglu._fwd_kernel", "swiglu._bwd_kernel", "cross_entropy_triton.ce_lse_kernel",
           "cross_entropy_triton.grad_kernel"}


@pytest.fixture(scope="module")
def rows():
    from fusion.bench.static_report import report
    out = []
    for only in ONLY:
        assert specs(only=only), only
        out += report(targets=TARGETS, only=only)
    return out


def test_every_kernel_compiles_for_both_targets(rows):
    errors = [(r["kernel"], r["config"], r["target"], r["status"]) for r in rows if r["status"] != "ok"]
    assert not errors
    assert {(r["kernel"], r["target"]) for r in rows} == {(k, ARCHS[t].name) for k in KERNELS for t in TARGETS}


def test_shared_memory_fits_and_the_prune_rule_bounds_it(rows):
    limits = {a.name: a.smem_per_block for a in ARCHS.values()}
    for r in rows:
        assert r["smem"] <= limits[r["target"]], r
        if r["smem_est"] is not None:  # the rule autotune prunes by must never under-estimate
            assert r["smem"] <= r["smem_est"], r
        assert r["blocks_per_sm"] >= 1, r


def test_no_spills_in_configs_autotune_may_pick(rows):
    spilling = [(r["kernel"], r["config"], r["target"], r["spill_stack"], r["spill_local"]) for r in rows
                if r["spill_stack"] or r["spill_local"]]
    assert not spilling


def test_attention_uses_wgmma_on_sm90_and_mma_on_sm80(rows):
    # bf16 / fp16 dots only: fp32 inputs use exact ("ieee") dots, which have no tensor-core form.
    attn = [r for r in rows if r["kernel"].startswith("attention.")]
    assert attn
    for r in attn:
        assert r["mma"] == ("HGMMA" if r["target"] == "sm_90" else "HMMA"), r

"""Document-run helpers against a plain-Python walk over each row."""

import torch

from fusion.kernels.doc_runs import run_bounds, run_index, run_positions, run_starts


def walk(row: list[int]) -> dict[str, list[int]]:
    """Per token: is it a run start, its run's [lo, hi), its position in the run and the run number."""
    out = {"start": [], "lo": [], "hi": [], "pos": [], "index": []}
    lo, index = 0, -1
    for t, d in enumerate(row):
        if t == 0 or d != row[t - 1]:
            lo, index = t, index + 1
        hi = t + 1
        while hi < len(row) and row[hi] == d:
            hi += 1
        for key, value in zip(out, (int(t == lo), lo, hi, t - lo, index), strict=True):
            out[key].append(value)
    return out


def test_helpers_match_a_python_walk():
    torch.manual_seed(0)
    rows = [[1, 1, 2, 2, 2, 7], [5] * 6, [0, 1, 0, 1, 1, 0], [3, 3, 3, 9, 9, 4]]
    rows += torch.randint(0, 3, (8, 11)).tolist()  # random short runs, ids reused by later runs
    for batch in (rows[:4], rows[4:]):
        doc_ids = torch.tensor(batch)
        lo, hi = run_bounds(doc_ids)
        assert lo.dtype == hi.dtype == torch.int32 and lo.is_contiguous()
        got = {"start": run_starts(doc_ids).int(), "lo": lo, "hi": hi, "pos": run_positions(doc_ids),
               "index": run_index(doc_ids)}
        for b, row in enumerate(batch):
            want = walk(row)
            for key in want:
                assert got[key][b].tolist() == want[key], (key, row)

"""Choosing few-shot examples: the bank entries nearest to a question, split into disjoint sets for voting.

Similarity is the cosine similarity of the retrieval keys (bank keys are stored L2-normalised; queries are
normalised here). Entries about the query's own image are left out, so a question never gets examples
about the image it asks about (which, on the bank's own split, would leak the answer).

Voting runs get disjoint sets, dealt **round-robin** from the ``n * runs`` nearest entries: run ``t`` gets the
neighbours ranked ``t, t + runs, t + 2 * runs, ...``, so every run gets examples of about the same quality
(run 0 has the very nearest one, run 1 the second nearest, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: bank rows compared at a time (bounds the float32 copy of the float16 keys)
CHUNK_ROWS = 65536

Neighbour = tuple[int, float]  # (bank row, cosine similarity)


def nearest(keys: torch.Tensor, queries: torch.Tensor, k: int,
            exclude: Sequence[Sequence[int]] | None = None) -> list[list[Neighbour]]:
    """The ``k`` rows of ``keys`` [N, D] most similar to each row of ``queries`` [B, D], best first.

    ``exclude[b]`` lists bank rows that query ``b`` must not get. Equal similarities are ordered by bank row.
    A query gets fewer than ``k`` neighbours when the bank has fewer eligible rows.
    """
    queries = F.normalize(queries.detach().float().cpu().reshape(-1, keys.shape[1]), dim=-1)
    if k <= 0 or keys.shape[0] == 0:
        return [[] for _ in range(queries.shape[0])]
    sims = torch.cat([queries @ keys[start:start + CHUNK_ROWS].float().T
                      for start in range(0, keys.shape[0], CHUNK_ROWS)], dim=1)
    for row, rows in enumerate(exclude or ()):
        if rows:
            sims[row, list(rows)] = float("-inf")
    top_sims, top_rows = sims.topk(min(k, sims.shape[1]), dim=1)
    out = []
    for row_sims, row_ids in zip(top_sims.tolist(), top_rows.tolist()):
        found = [(i, s) for i, s in zip(row_ids, row_sims) if s != float("-inf")]
        out.append(sorted(found, key=lambda pair: (-pair[1], pair[0])))
    return out


def split_runs(neighbours: Sequence[Neighbour], runs: int, per_run: int) -> list[list[Neighbour]]:
    """Deal ``neighbours`` (best first) round-robin into ``runs`` disjoint lists of at most ``per_run`` each."""
    return [list(neighbours[start::runs][:per_run]) for start in range(runs)]

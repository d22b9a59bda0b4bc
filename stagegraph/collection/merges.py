"""Which segments to merge: a tiered policy (the shape of Lucene's `TieredMergePolicy`).

Every commit adds a segment, so without merges a collection would end as thousands of tiny ones
and every search would visit each. `MergePolicy.choose(segments)` picks at most one merge:

1. **Tiers.** A segment's tier is how many times `segments_per_tier` fits between `floor_chunks` and
   its live chunks (everything under `floor_chunks` is tier 0). When a tier holds `segments_per_tier`
   segments or more, its `max_merge_at_once` smallest merge into one (which lands a tier up). So a
   collection of N chunks holds at most about `segments_per_tier * log(N / floor_chunks)` segments,
   and each chunk is rewritten about `log(N)` times over its life, not once per commit.
2. **Deletions.** A segment of at least `floor_chunks` rows whose deleted share exceeds
   `deletes_pct_allowed` is rewritten alone (compacted): deleted rows cost a search their postings
   and memory until then. (Smaller segments are merged by their tier soon enough.)

`max_inline_chunks` bounds the merges a writer runs right after publishing a commit (the write is
already visible; the merge publishes another generation), so that a write waits at most for one
small merge; bigger ones run when asked (`Collection.merge()`, `stagegraph collection merge DIR`,
in another process or thread while searches go on) or all at once (`compact`, one segment).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from stagegraph.collection.layout import SegmentRef


class MergePolicy(BaseModel):
    """How segments are merged (see the module docstring); the defaults suit 10k-10M chunks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segments_per_tier: int = Field(10, ge=2)
    max_merge_at_once: int = Field(10, ge=2)
    floor_chunks: int = Field(2_000, ge=1)
    deletes_pct_allowed: float = Field(20.0, ge=0.0, le=100.0)
    max_inline_chunks: int = Field(200_000, ge=0)

    def tier(self, ref: SegmentRef) -> int:
        live = max(ref.live_chunks, self.floor_chunks)
        return int(math.floor(math.log(live / self.floor_chunks, self.segments_per_tier) + 1e-9))

    def choose(self, segments: list[SegmentRef], *, max_chunks: int | None = None) -> list[str] | None:
        """The ids of the segments to merge next (None: nothing to do); `max_chunks` bounds the
        merged segment's live chunks (None: no bound)."""
        def fits(refs: list[SegmentRef]) -> bool:
            return max_chunks is None or sum(r.live_chunks for r in refs) <= max_chunks

        tiers: dict[int, list[SegmentRef]] = {}
        for ref in segments:
            tiers.setdefault(self.tier(ref), []).append(ref)
        for tier in sorted(tiers):
            members = sorted(tiers[tier], key=lambda r: (r.live_chunks, r.id))
            if len(members) >= self.segments_per_tier:
                chosen = members[: self.max_merge_at_once]
                if fits(chosen):
                    return [r.id for r in chosen]
        heavy = [r for r in segments if r.chunks >= self.floor_chunks
                 and 100.0 * r.deleted_chunks / r.chunks > self.deletes_pct_allowed]
        heavy = [r for r in sorted(heavy, key=lambda r: (-r.deleted_chunks / r.chunks, r.id)) if fits([r])]
        return [heavy[0].id] if heavy else None

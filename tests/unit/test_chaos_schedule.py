"""The chaos fault schedule: seeded, reproducible, and never impairs every gatherer at once."""

from __future__ import annotations

import itertools
import os

import pytest

from kalshi_data.tools.chaos import (
    DEFAULT_KINDS,
    DEFAULT_MARGIN_S,
    FAILOVER_SPACING_S,
    KINDS,
    RECOVERY_MARGIN_S,
    _kinds,
    build_parser,
    make_schedule,
    schedule_digest,
)

GATHERERS = ["g1", "g2", "g3"]


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a = make_schedule(11, 1800, 6, GATHERERS, list(KINDS))
    b = make_schedule(11, 1800, 6, GATHERERS, list(KINDS))
    c = make_schedule(12, 1800, 6, GATHERERS, list(KINDS))
    assert a == b
    assert schedule_digest(a) == schedule_digest(b)
    assert schedule_digest(a) != schedule_digest(c)


def test_thirty_minutes_give_over_a_hundred_faults_of_every_kind() -> None:
    plan = make_schedule(5, 1800, 6, GATHERERS, list(KINDS))
    assert len(plan) >= 100
    assert {f.kind for f in plan} == set(KINDS)
    assert all(f.at_s >= 10 and f.at_s + f.duration_s < 1800 - 20 for f in plan)


@pytest.mark.parametrize("seed", range(20))
def test_at_least_one_gatherer_hears_everything_at_every_instant(seed: int) -> None:
    plan = make_schedule(seed, 1200, 30, GATHERERS, list(KINDS))
    spans = []
    for f in plan:
        if KINDS[f.kind][0]:
            margin = RECOVERY_MARGIN_S.get(f.kind, DEFAULT_MARGIN_S)
            spans.append((f.at_s, f.at_s + f.duration_s + margin, f.target))
    assert spans
    for start, _, _ in spans:  # the impaired set only grows at a span's start
        impaired = {g for s, e, g in spans if s <= start < e}
        assert len(impaired) < len(GATHERERS), (seed, start, impaired)


@pytest.mark.parametrize("seed", range(10))
def test_one_fault_per_resource_and_failovers_spaced(seed: int) -> None:
    plan = make_schedule(seed, 1200, 30, GATHERERS, list(KINDS))
    by_resource: dict[str, list[tuple[float, float]]] = {}
    for f in plan:
        res = KINDS[f.kind][1].format(g=f.target)
        by_resource.setdefault(res, []).append((f.at_s, f.at_s + f.duration_s))
    for spans in by_resource.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end
    failovers = [f.at_s for f in plan if f.kind == "production_failover"]
    assert all(b - a >= FAILOVER_SPACING_S for a, b in itertools.pairwise(failovers))


def test_kinds_option_restricts_the_schedule() -> None:
    plan = make_schedule(1, 600, 20, GATHERERS, ["sim_drop", "gatherer_db_kill9"])
    assert {f.kind for f in plan} <= {"sim_drop", "gatherer_db_kill9"}
    args = build_parser().parse_args(["--seed", "9", "--duration", "60", "--timescaledb"])
    assert (args.seed, args.duration, args.timescaledb) == (9, 60.0, True)


def test_spool_disk_full_is_opt_in_and_shares_the_gatherer_database() -> None:
    """``--spool-disk-full`` adds the kind (left out of the default draw, so the recorded seeds
    keep their plans); it takes the gatherer's database and process, so no DB or process fault
    on that gatherer overlaps it."""
    assert "gatherer_spool_disk_full" not in DEFAULT_KINDS
    plain = build_parser().parse_args([])
    flagged = build_parser().parse_args(["--spool-disk-full"])
    if os.geteuid() != 0:
        with pytest.raises(SystemExit, match="need root"):
            _kinds(flagged)
        return
    assert "gatherer_spool_disk_full" not in _kinds(plain)
    assert "gatherer_spool_disk_full" in _kinds(flagged)
    plan = make_schedule(16, 180, 20, GATHERERS, _kinds(flagged))
    full = [f for f in plan if f.kind == "gatherer_spool_disk_full"]
    assert full
    db_faults = [
        f
        for f in plan
        if f.kind
        in ("gatherer_db_kill9", "gatherer_db_sigstop", "gatherer_kill9", "gatherer_sigstop")
    ]
    assert {f.kind for f in db_faults} >= {"gatherer_db_kill9", "gatherer_kill9"}
    for f in full:
        for d in db_faults:
            if d.target == f.target:
                assert d.at_s >= f.at_s + f.duration_s or d.at_s + d.duration_s <= f.at_s, (f, d)


def test_a_fault_whose_resource_is_still_held_is_skipped_not_delayed(tmp_path) -> None:
    """A late fault still holds ``pg:g1``: the next fault on it is skipped at once (counted and
    noted), and a fault on another resource runs; the held resource stays held."""
    from kalshi_data.testing.cluster import LocalCluster
    from kalshi_data.tools.chaos import Chaos, Fault

    chaos = Chaos(LocalCluster(tmp_path), build_parser().parse_args([]))
    ran: list[str] = []

    def fake(f: Fault, _rng: object) -> bool:
        ran.append(f.target)
        return True

    chaos._f_gatherer_db_sigstop = fake  # type: ignore[method-assign,assignment]
    chaos.busy_resources.add("pg:g1")
    chaos.run_fault(Fault(10.0, "gatherer_db_sigstop", "g1", 2.0, 1))
    assert ran == []
    assert chaos.skipped["gatherer_db_sigstop"] == 1
    assert any("a late fault holds it" in e for e in chaos.errors), chaos.errors
    chaos.run_fault(Fault(11.0, "gatherer_db_sigstop", "g2", 2.0, 2))
    assert ran == ["g2"]
    assert chaos.done["gatherer_db_sigstop"] == 1
    assert chaos.busy_resources == {"pg:g1"}

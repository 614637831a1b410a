"""Market sharding and subscription layout: each market in exactly one subscription."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gatherer.shards import AddMarkets, DeleteMarkets, ShardPlan, Subscribe, SubscriptionLayout


def test_shard_plan_balances_and_is_stable():
    """New markets go to the least-loaded connection and stay there until removed."""
    plan = ShardPlan(3)
    owners = [plan.assign(f"M{i}") for i in range(9)]
    assert plan.loads == [3, 3, 3]
    assert plan.assign("M0") is None
    assert plan.owner("M4") == owners[4]
    assert plan.remove("M4") == owners[4]
    assert plan.assign("NEW") == owners[4]
    assert sorted(m for c in range(3) for m in plan.markets_of(c)) == sorted(
        [f"M{i}" for i in range(9) if i != 4] + ["NEW"]
    )


def test_layout_batches_then_adds_to_acknowledged_slots():
    """Initial markets are subscribed in batches; later ones use add_markets where room is."""
    lay = SubscriptionLayout(per_subscription=2)
    lay.desired |= {"A", "B", "C"}
    acts = lay.plan()
    assert [type(a) for a in acts] == [Subscribe, Subscribe]
    assert [a.markets for a in acts] == [("A", "B"), ("C",)]
    assert lay.plan() == []  # nothing placed twice while in flight
    for n, a in enumerate(acts):
        lay.acknowledged(a.slot_id, sid=10 + n)
    lay.desired.add("D")
    (add,) = lay.plan()
    assert isinstance(add, AddMarkets)
    assert (add.sid, add.markets) == (11, ("D",))
    lay.acknowledged(add.slot_id)
    lay.desired.discard("A")
    (delete,) = lay.plan()
    assert isinstance(delete, DeleteMarkets)
    assert (delete.sid, delete.markets) == (10, ("A",))


def test_refused_add_is_retried_elsewhere_when_full():
    """Error 26 shrinks the slot's capacity and the markets go to a new subscription."""
    lay = SubscriptionLayout(per_subscription=5)
    lay.desired |= {"A"}
    (sub,) = lay.plan()
    lay.acknowledged(sub.slot_id, sid=1)
    lay.desired |= {"B", "C"}
    (add,) = lay.plan()
    assert isinstance(add, AddMarkets)
    lay.failed(add.slot_id, add.markets, full=True)
    (again,) = lay.plan()
    assert isinstance(again, Subscribe)
    assert again.markets == ("B", "C")


def test_dropped_slot_is_resubscribed():
    """A terminal error frees the slot's markets and the next plan subscribes them again."""
    lay = SubscriptionLayout(per_subscription=5)
    lay.desired |= {"A", "B"}
    (sub,) = lay.plan()
    lay.acknowledged(sub.slot_id, sid=4)
    assert lay.drop_slot(sub.slot_id) == ("A", "B")
    (again,) = lay.plan()
    assert isinstance(again, Subscribe)
    assert again.markets == ("A", "B")


_ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "ack", "fail", "full", "drop", "reset"]),
        st.sampled_from([f"M{i}" for i in range(8)]),
    ),
    max_size=60,
)


@given(_ops, st.integers(min_value=1, max_value=4))
def test_no_market_is_ever_in_two_subscriptions(ops, per_sub):
    """Whatever the order of changes and outcomes, a market sits in at most one slot."""
    lay = SubscriptionLayout(per_subscription=per_sub)
    inflight: list[AddMarkets | Subscribe | DeleteMarkets] = []
    sid = 0
    for op, market in ops:
        if op == "add":
            lay.desired.add(market)
        elif op == "remove":
            lay.desired.discard(market)
        elif op == "reset":
            lay.reset()
            inflight.clear()
        elif inflight:
            act = inflight.pop(0)
            if op == "ack":
                sid += 1
                lay.acknowledged(act.slot_id, sid if isinstance(act, Subscribe) else None)
            elif op in {"fail", "full"} and not isinstance(act, DeleteMarkets):
                lay.failed(act.slot_id, act.markets, full=op == "full")
            elif op == "drop":
                lay.drop_slot(act.slot_id)
        inflight.extend(lay.plan())
        seen: dict[str, int] = {}
        for slot in lay.slots:
            assert len(slot.markets) <= max(per_sub, slot.capacity)
            for m in slot.markets:
                assert m not in seen, f"{m} in two slots"
                seen[m] = slot.slot_id
        assert set(seen) == lay.placed


def test_refused_new_subscription_halves_the_batch():
    """Error 26 on a whole new subscription: later batches are smaller, so they fit."""
    lay = SubscriptionLayout(per_subscription=8)
    lay.desired |= {f"M{i}" for i in range(8)}
    (sub,) = lay.plan()
    lay.failed(sub.slot_id, sub.markets, full=True)
    assert lay.per_subscription == 4
    again = lay.plan()
    assert [len(a.markets) for a in again] == [4, 4]

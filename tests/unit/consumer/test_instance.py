"""Transactional ids: stable per slot, never shared by two live consumers."""

from pathlib import Path

from orderpipe.consumer.instance import claim_slot


def test_live_consumers_get_different_ids_and_a_freed_slot_is_reused(tmp_path: Path) -> None:
    first = claim_slot("group-a", tmp_path)
    second = claim_slot("group-a", tmp_path)
    other_group = claim_slot("group-b", tmp_path)
    assert first.transactional_id.endswith(".0")
    assert second.transactional_id.endswith(".1")
    assert other_group.transactional_id.startswith("group-b.")
    assert other_group.transactional_id.endswith(".0")

    first.release()  # as when its process dies: the lock goes with it
    restarted = claim_slot("group-a", tmp_path)
    assert restarted.transactional_id == first.transactional_id
    for slot in (second, other_group, restarted):
        slot.release()

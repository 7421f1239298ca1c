"""Sharding arithmetic of samgpu.distributed (two processes: tests/test_cli_generate.py)."""

from samgpu.distributed import DistInfo, broadcast, gather, num_rounds, shard


def test_round_robin_shards_cover_everything_once():
    """5 pending records over 2 ranks: rank 0 gets [0, 2, 4], rank 1 gets [1, 3]; with batch size 2
    both ranks join ceil(3 / 2) = 2 rounds."""
    items = [0, 1, 2, 4, 6]
    ranks = [DistInfo(rank=r, world_size=2) for r in range(2)]
    assert [shard(items, i) for i in ranks] == [[0, 2, 6], [1, 4]]
    assert num_rounds(len(items), 2, ranks[0]) == 2
    for world in (1, 3, 8):
        infos = [DistInfo(rank=r, world_size=world) for r in range(world)]
        parts = [shard(list(range(11)), i) for i in infos]
        assert sorted(sum(parts, [])) == list(range(11))
        assert num_rounds(11, 3, infos[0]) * 3 >= max(len(p) for p in parts)


def test_single_process_collectives_are_identity():
    one = DistInfo()
    assert not one.is_distributed and one.is_main
    assert broadcast({"a": 1}, one) == {"a": 1}
    assert gather([1, 2], one) == [[1, 2]]

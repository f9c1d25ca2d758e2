"""The layers' weights packed into a few allocations: same values, same sharing, tables re-pointed."""
from __future__ import annotations

import torch
from torch import nn

from sharvet.inference.arena import ALIGN_BYTES, pack_parameters


def _params(*shapes: tuple[int, ...]) -> list[nn.Parameter]:
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(*s), requires_grad=False) for s in shapes]


def test_packing_keeps_values_and_sharing():
    a, b, c = _params((3, 5), (7,), (2, 2))
    twin = nn.Parameter(a.data, requires_grad=False)  # another Parameter over the same memory (a shared basis)
    before = [p.detach().clone() for p in (a, b, c)]
    assert pack_parameters([a, b, twin, c, a]) == 1
    for p, old in zip((a, b, c), before):
        assert torch.equal(p, old)
    assert twin.data_ptr() == a.data_ptr()
    storage = a.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in (b, c))
    assert all((p.data_ptr() - storage) % ALIGN_BYTES == 0 for p in (a, b, c))
    # exactly as large as its aligned members (no rounding up to pages: the allocator may reuse a long tail)
    assert a.untyped_storage().nbytes() == ALIGN_BYTES * 3


def test_arenas_are_filled_largest_first_within_their_size_and_split_by_dtype():
    """First fit, largest first: 1536 + 512 and 1024 + 1024 bytes fill two arenas of 2048 (in order: three)."""
    sizes = (256, 384, 128, 256)  # float32: 1024, 1536, 512 and 1024 bytes
    params = _params(*[(n,) for n in sizes])
    assert pack_parameters(params, arena_bytes=2048) == 2
    base = {p.untyped_storage().data_ptr() for p in params}
    assert len(base) == 2
    big, _ = _params((1024,), (1,))  # a tensor larger than an arena gets one of its own
    d, = _params((64,))
    d.data = d.data.double()
    assert pack_parameters([big, d], arena_bytes=2048) == 2


def test_prepare_packs_and_the_grouped_tables_point_at_the_packed_weights():
    from sharvet.inference.form import prepare
    from sharvet.inference.grouped import GroupedStages
    from sharvet.inference.shapes import compressed_random, plan_for, random_model, shape_config

    config, cpu = shape_config("tiny"), torch.device("cpu")
    plan = plan_for(random_model(config, torch.float32, cpu, 0), 0.5, cpu)
    model = prepare(compressed_random(config, plan, torch.float32, cpu, 0), fuse="grouped")
    assert model.sharvet_inference.arenas == 1
    groups = [m for m in model.modules() if isinstance(m, GroupedStages)]
    assert groups
    for g in groups:
        assert g.first.w.tolist() == [m.basis.data_ptr() for m in g.parts]
        assert g.second.w.tolist() == [m.v.data_ptr() for m in g.parts]
        for launch in (g.first, g.second):  # a launch's tables: one allocation, not one each
            tables = [launch.w, launch.s, launch.n, launch.k, launch.x_off, launch.y_off,
                      *[layout[3] for layout in launch.layouts.values()]]
            assert len({t.untyped_storage().data_ptr() for t in tables}) == 1

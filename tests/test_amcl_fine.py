"""The fine-map / dense-scan evaluation: the aisle warehouse, scans cast on sub-cells, and the
scenario's table on a tiny run."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from modelkernels.kernels.amcl import evaluate, nav2_source_peer
from modelkernels.kernels.amcl.simulator import generate_aisles, simulate
from modelkernels.pyimpl.amcl.maps import FREE, OCCUPIED


def test_aisles_repeat_along_x() -> None:
    m = generate_aisles(0, width_m=24.0, resolution=0.05, pallets=0)
    assert m.state.shape == (200, 480)
    rows = np.flatnonzero((m.state == OCCUPIED).sum(axis=1) > m.state.shape[1] // 2)
    assert len(rows) > 2 * 12  # at least two shelf rows 0.6 m (12 cells) deep besides the walls
    shelf = m.state[rows[len(rows) // 2], 10:-10]  # a shelf row, without the side walls
    occupied = (shelf == OCCUPIED).astype(int)
    gap_starts = np.flatnonzero(np.diff(occupied) == -1)[:-1]  # the last fall is the shelf's end
    gap_ends = np.flatnonzero(np.diff(occupied) == 1)[1:]  # the first rise is the shelf's start
    np.testing.assert_array_equal(np.diff(gap_starts), [80, 80, 80])  # a gap every 4 m
    np.testing.assert_array_equal(gap_ends - gap_starts, [24] * 4)  # 1.2 m wide
    with pytest.raises(ValueError, match="gap_every"):
        generate_aisles(0, gap=5.0)


def test_scans_on_sub_cells_are_not_quantised_to_cells() -> None:
    m = generate_aisles(1, width_m=6.0, height_m=5.0, resolution=0.1, pallets=2)
    coarse = simulate(m, 5, seed=3, beams=90, range_noise=0.0, dropout=0.0, short_rate=0.0)
    fine = simulate(m, 5, seed=3, beams=90, range_noise=0.0, dropout=0.0, short_rate=0.0, scan_upsample=5)
    np.testing.assert_array_equal(coarse.truth, fine.truth)  # the same drive, only the scans differ
    a, b = coarse.scans[-1].ranges, fine.scans[-1].ranges
    hit = (a < 8.0) & (b < 8.0)
    assert hit.sum() > 45
    diff = np.abs(a[hit] - b[hit])
    assert (diff < 1.5 * 0.1).mean() > 0.9  # the same walls (a ray may slip past a corner on sub-cells)
    assert np.abs(np.round(b[hit] / 0.1) - b[hit] / 0.1).max() > 0.1  # not multiples of the cell size
    assert (m.state[m.state != OCCUPIED] == FREE).any()
    with pytest.raises(ValueError, match="scan_upsample"):
        simulate(m, 2, scan_upsample=0)


def test_fine_scenario_table_on_a_tiny_run() -> None:
    rows = evaluate.fine_scenario(resolution=0.05, floors=0, warehouses=1, seeds=2, steps=25, beams=90,
                                  particles=300, peer=False,
                                  filters={"lf": dict(laser_model_type="likelihood_field")})
    assert list(rows) == ["lf"] and len(rows["lf"]) == 2
    assert all(math.isfinite(s["pos_median"]) and s["pos_median"] < 0.3 for s in rows["lf"])
    table = evaluate.spread_table(rows)
    assert table.splitlines()[2].startswith("| lf | 2 | ")
    assert "[" in table.splitlines()[2]


def test_nav2_source_peer_rejects_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not the amcl package's sources"):
        nav2_source_peer.find_source(tmp_path)
    with pytest.raises(ValueError, match="laser_model_type='beams'"):
        nav2_source_peer.Nav2SourcePeer(tmp_path / "missing.so", generate_aisles(0, resolution=0.1),
                                        laser_model_type="beams")
    with pytest.raises(ValueError, match="nav2_models"):
        evaluate.fine_scenario(floors=0, warehouses=1, seeds=1, steps=2, peer=False, filters={},
                               nav2_library=tmp_path / "missing.so", nav2_models=("field",))


NAV2_SOURCE = os.environ.get("KERNELS_NAV2_AMCL_SOURCE")


@pytest.mark.skipif(not NAV2_SOURCE, reason="nav2's own laser models need the amcl package's sources: set "
                    "KERNELS_NAV2_AMCL_SOURCE to its source archive or folder (or 'pip')")
def test_nav2_source_peer_tracks_with_each_laser_model() -> None:
    assert NAV2_SOURCE is not None
    library = nav2_source_peer.build(nav2_source_peer.find_source(NAV2_SOURCE))
    rows = evaluate.fine_scenario(resolution=0.05, floors=0, warehouses=1, seeds=1, steps=25, beams=90,
                                  particles=300, peer=False, filters={}, nav2_library=library)
    assert len(rows) == len(evaluate.NAV2_SOURCE_MODELS)
    for label, summaries in rows.items():
        assert label.startswith("nav2 core built from source, ")
        assert math.isfinite(summaries[0]["pos_median"]) and summaries[0]["pos_median"] < 0.3, (label, summaries)

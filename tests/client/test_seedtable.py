"""The seed's table reproduced: our rows beside theirs (cited), per partition, with what differs."""

from __future__ import annotations

from services.client import seedtable
from services.coordinator.plots import seed_comparison, to_png


def row(partition: str, world_size: int, partitions: int, seconds: float, **extra) -> dict:
    return {"partition": partition, "world_size": world_size, "partitions": partitions, "duration_s": seconds,
            "wall_time_s": seconds + 3, "memory_mb": 900.0, "cost_usd": 0.004, "legacy_cost_usd": 0.0004,
            "requests": world_size, **extra}


LOCAL = {"local": True, "host_cpus": 2, "ranks_at_once": 2, "threads_per_rank": 1}


def test_our_rows_sit_beside_the_seeds_own_cited_as_theirs():
    ours = [row("25MB", 1, 2, 20.0, execution=LOCAL, cold_starts=1), row("25MB", 2, 2, 12.0, execution=LOCAL,
                                                                          cold_starts=1),
            row("100MB", 1, 2, 80.0, execution=LOCAL, cold_starts=0)]
    text = seedtable.render(ours)
    lines = text.splitlines()
    assert lines[0].startswith("| Partition | Source | World size | Partitions | Mean rank time (s) | s per partition")
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert [line.split(" | ")[1] for line in body] == ["ours", "ours", "seed (theirs)", "ours", "seed (theirs)"]
    assert body[0].startswith("| 25MB | ours | 1 | 2 | 20.00 | 10.00 |")  # 20 s for 2 partitions on 1 rank
    assert body[1].startswith("| 25MB | ours | 2 | 2 | 12.00 | 12.00 |")  # 1 partition per rank
    assert body[2] == "| 25MB | seed (theirs) | 517 | 517 | 6.55 | 6.55 | 2.8GB | - | 0.1600 |"
    assert body[4] == "| 100MB | seed (theirs) | 130 | 130 | 25.00 | 25.00 | 7.0GB | - | 0.3800 |"
    assert "50MB" not in text.split("Seed rows:")[0]  # only the sizes the sweep ran
    assert "Seed rows: the legacy study's own table (shared/LEGACY.md)" in text
    assert "here 10.0x to 10.0x the legacy formula's" in text
    assert "on 2 CPUs, up to 2 ranks at once" in text
    assert "2 on 1, 2 on 2 (partitions on ranks)" in text
    assert "Cold starts: 2 of these 4 invocations started a new sandbox" in text


def test_no_cpu_sentence_without_execution_facts_and_a_lambda_one_with_them():
    assert "CPUs:" not in seedtable.render([row("50MB", 1, 1, 9.0)])
    aws = {"local": False, "host_cpus": None, "ranks_at_once": 1, "threads_per_rank": 6}
    assert "these ran on Lambda" in seedtable.render([row("50MB", 1, 1, 9.0, execution=aws)])


def test_the_comparison_plot_draws_ours_per_world_size_and_theirs():
    ours, theirs = seedtable.comparison_rows([row("25MB", 1, 2, 20.0), row("75MB", 1, 2, 60.0),
                                              row("25MB", 2, 2, 12.0)])
    assert [r["partition"] for r in theirs] == ["25MB", "75MB"]
    figure = seed_comparison(ours, theirs)
    to_png(figure)
    time_axes, memory_axes = figure.axes
    lines = {line.get_gid(): line for line in time_axes.get_lines()}
    assert list(lines["ours, 1 rank"].get_xdata()) == [25.0, 75.0]
    assert list(lines["ours, 1 rank"].get_ydata()) == [10.0, 30.0]
    assert list(lines["the seed's (theirs)"].get_ydata()) == [6.55, 17.6]
    assert list(lines["ours, 2 ranks"].get_ydata()) == [12.0]
    assert time_axes.get_xlim()[0] == 0 and time_axes.get_ylim()[0] == 0
    assert list(time_axes.get_xticks()) == [0, 25, 50, 75, 100]
    assert memory_axes.get_ylim()[0] == 0

"""A spare is handed its model's parsed options (typed JSON), not a command line to parse
again: what it serves is exactly what ``llama-router child ARGV`` would."""

from __future__ import annotations

import sys
from pathlib import Path

from router.model_options import options_from_json, options_to_json, parse_child_arguments
from router.processes.own_children import can_run_in_a_spare, own_child_argv
from router.spec import ModelSpec

CHILD = [sys.executable, "-m", "router", "child"]


def test_the_typed_options_are_what_the_command_line_says() -> None:
    spec = ModelSpec(id="m", path=Path("/models/m.gguf"), mmproj=Path("/models/mmproj.gguf"))
    options = {"ctx_size": 512, "flash_attn": "on", "pooling": "mean", "temp": 0.0, "n_predict": 3}
    argv = own_child_argv(spec, Path("/run/m.sock"), options, ["--parallel", "2"])
    expected = parse_child_arguments(argv[len(CHILD) :])
    assert options_from_json(options_to_json(*expected)) == expected
    engine, serve = expected
    assert (engine.ctx_size, engine.parallel, engine.mmproj) == (512, 2, spec.mmproj)
    assert (serve.unix_socket, serve.temp, serve.n_predict) == (Path("/run/m.sock"), 0.0, 3)


def test_a_command_line_that_does_not_parse_goes_to_a_new_child() -> None:
    assert can_run_in_a_spare([*CHILD, "-m", "x.gguf", "-c", "512"])
    assert not can_run_in_a_spare([*CHILD, "-m", "x.gguf", "--no-such-flag"])
    assert not can_run_in_a_spare([*CHILD, "-m", "x.gguf", "-c", "big"])
    assert not can_run_in_a_spare(["numactl", "-N0", *CHILD, "-m", "x.gguf"])

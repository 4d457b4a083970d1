"""What `cscore demo` tells the user to run for its results: the stack it stopped took them with it (moto keeps
nothing across restarts), and the demo's receipts come from the simulated TEE, which `owner results` refuses
without --accept-simulated."""

from __future__ import annotations

import shlex

from cscore.cli import _parser
from cscore.demo import results_next_step


def test_after_a_stopped_stack_it_says_to_keep_it_up_first() -> None:
    text = results_next_step("b-1", "/tmp/s", keep=False)
    assert text == ("gone with the stopped stack: run `cscore demo --keep`, then `cscore owner results b-1 --tenant "
                    "acme --accept-simulated --out FILE --state-dir /tmp/s` decrypts them")


def test_with_keep_it_names_the_command_and_how_to_stop_the_stack() -> None:
    text = results_next_step("b-1", "/tmp/s", keep=True)
    assert text == ("`cscore owner results b-1 --tenant acme --accept-simulated --out FILE --state-dir /tmp/s` "
                    "decrypts them; `cscore stack stop --state-dir /tmp/s` when done")


def test_the_images_demo_names_itself_and_a_file_that_holds_list_columns() -> None:
    """CSV refuses the images' list column (probabilities): the images demo names a Parquet file."""
    text = results_next_step("b-1", "/tmp/s", keep=False, demo="cscore demo --example images", out="results.parquet")
    assert text == ("gone with the stopped stack: run `cscore demo --example images --keep`, then `cscore owner "
                    "results b-1 --tenant acme --accept-simulated --out results.parquet --state-dir /tmp/s` decrypts "
                    "them")


def test_the_commands_it_names_parse_as_written() -> None:
    for keep in (False, True):
        for command in [*results_next_step("b-1", "/tmp/s", keep=keep).split("`")[1::2],
                        *results_next_step("b-1", "/tmp/s", keep=keep, demo="cscore demo --example images",
                                           out="r.parquet").split("`")[1::2]]:
            words = shlex.split(command)
            assert words[0] == "cscore"
            args = _parser(words[1]).parse_args(words[1:])
            assert getattr(args, "accept_simulated", True) is True

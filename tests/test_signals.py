"""fpn_geo.signals: SIGTERM as KeyboardInterrupt, signals held over lines that must not be cut in half."""

from __future__ import annotations

import os
import signal

import pytest

from fpn_geo.signals import Terminated, interrupts_deferred, terminate_as_interrupt


@pytest.fixture
def restore_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def test_sigterm_raises_terminated_a_keyboard_interrupt(restore_sigterm):
    terminate_as_interrupt()
    with pytest.raises(KeyboardInterrupt) as info:
        os.kill(os.getpid(), signal.SIGTERM)
    assert isinstance(info.value, Terminated)


def test_interrupts_are_held_until_the_block_ends(restore_sigterm):
    terminate_as_interrupt()
    done = []
    with pytest.raises(Terminated):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("first rename")
            done.append("second rename")
    assert done == ["first rename", "second rename"]
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("third")
    assert done[-1] == "third"

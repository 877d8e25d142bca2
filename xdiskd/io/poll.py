"""
The daemon's reactor: Twisted's epoll reactor with a leaner poll loop
that may busy-poll briefly before it sleeps.

A reactor subclass rather than a patch of an installed reactor: twistd
installs the default reactor only when the first C{import reactor} runs,
and without C{--reactor} that is L{xdiskd.service.makeService}, which
installs this one instead (L{install}).  Under another reactor (C{twistd
-r ...}, trial) xdiskd runs on it unchanged.  The internals it polls
through are listed in L{xdiskd.io.internals}.
"""

from __future__ import annotations

import errno
import sys
import time
from typing import Any, Optional

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

from xdiskd.io.internals import reactorProblems

log = Logger()


class SpinWindow:
    """
    How long a reactor busy-polls before it blocks: adaptive, as KVM's
    halt polling.  A process that sleeps in C{epoll_wait} pays for the
    sleep and the wake-up (tens of microseconds of scheduler work on a
    VM, and caches gone cold) on every event; when events come at short
    intervals, as replies do at queue depth 1, polling for them a little
    longer costs less than sleeping.

    The window starts at 0.  A blocking wait ended by I/O within
    C{maximum} seconds means a longer poll would have caught it: the
    window doubles (from L{START}) up to C{maximum}.  A wait longer than
    that, or one ended by a timer, halves it, down to 0: an idle or
    lightly loaded daemon does not spin.  C{maximum} 0 turns polling off.
    """

    START = 10e-6

    def __init__(self, maximum: float) -> None:
        self.maximum = maximum
        self.window = 0.0

    def blocked(self, seconds: float, woken: bool) -> None:
        """A blocking wait took C{seconds}; C{woken}: I/O ended it."""
        if woken and seconds <= self.maximum:
            self.window = min(max(self.window * 2, self.START), self.maximum)
        elif self.window:
            half = self.window / 2
            self.window = half if half >= self.START else 0.0


class LeanEPollReactor(EPollReactor):
    """
    An epoll reactor whose C{doPoll} goes without Twisted's per-event
    C{callWithLogger} (a logPrefix call and a logging-context push and
    pop around every ready descriptor, for legacy C{log.msg} lines'
    system prefix).  Errors are still caught, logged and disconnect the
    descriptor: that is C{_doReadOrWrite}'s own work.

    With a C{spinMax} (seconds) it polls for up to a L{SpinWindow}
    before it blocks.  If this Twisted lacks an internal the loop needs
    (L{xdiskd.io.internals.REACTOR}), it polls as Twisted's own does.

    @ivar spinWindow: the L{SpinWindow}; its C{maximum} may be changed.
    @ivar lean: whether the lean loop is in use.
    @ivar problems: what this Twisted lacks for it (empty if C{lean}).
    """

    def __init__(self, spinMax: float = 0.0) -> None:
        EPollReactor.__init__(self)
        self.spinWindow = SpinWindow(spinMax)
        self.problems = reactorProblems(self)
        self.lean = not self.problems

    def doPoll(self, timeout: Optional[float]) -> None:
        if not self.lean:
            return EPollReactor.doPoll(self, timeout)
        poll = self._poller.poll
        selectables = self._selectables
        spin = self.spinWindow
        try:
            if not spin.maximum or timeout == 0:
                events = poll(-1 if timeout is None else timeout,
                              len(selectables))
            else:
                events = self._spinPoll(poll, spin, timeout)
        except OSError as err:
            if err.errno == errno.EINTR:
                return None
            raise
        drdw = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                drdw(selectable, fd, event)
        return None

    doIteration = doPoll

    def _spinPoll(self, poll: Any, spin: SpinWindow,
                  timeout: Optional[float]) -> Any:
        """poll(0) for the spin window, then block for the rest."""
        clock = time.monotonic
        n = len(self._selectables)
        start = clock()
        events = None
        window = spin.window
        if window:
            deadline = start + (window if timeout is None
                                else min(window, timeout))
            while True:
                events = poll(0, n)
                if events:
                    return events
                if clock() >= deadline:
                    break
        if timeout is None:
            events = poll(-1, n)
        else:
            events = poll(max(0.0, timeout - (clock() - start)), n)
        spin.blocked(clock() - start, bool(events))
        return events


def install(spinMax: float = 0.0) -> Any:
    """
    Install a L{LeanEPollReactor} as the global reactor if none is yet
    (and the platform has epoll); else leave the one there.

    @return: the global reactor.
    """
    if "twisted.internet.reactor" not in sys.modules:
        try:
            reactor = LeanEPollReactor(spinMax)
        except (ImportError, AttributeError, OSError):
            pass        # no epoll here: Twisted's default
        else:
            from twisted.internet.main import installReactor
            installReactor(reactor)
            if reactor.problems:
                log.warn("this Twisted lacks what lean polling needs, "
                         "polling as Twisted does: {problems}",
                         problems="; ".join(reactor.problems))
    from twisted.internet import reactor as installed
    return installed


def setSpin(reactor: Any, spinMax: float) -> bool:
    """
    Set C{reactor}'s busy-poll maximum (seconds).

    @return: whether C{reactor} polls that way (a L{LeanEPollReactor}).
    """
    if not isinstance(reactor, LeanEPollReactor):
        return False
    reactor.spinWindow.maximum = spinMax
    return True

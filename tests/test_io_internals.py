"""
Tests for L{xdiskd.io.internals}: the contract between xdiskd's I/O layer
and the Twisted installed.  When a Twisted release drops or changes an
internal the layer uses, L{ContractTests.test_thisTwisted} fails and
names it; then fix the layer (or its fallback) before widening the
Twisted bound in setup.cfg.
"""

import ast
import os

import twisted
from twisted.internet.testing import MemoryReactor
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase

import xdiskd.io
from xdiskd.io import internals


class ContractTests(SynchronousTestCase):
    def test_thisTwisted(self):
        """This Twisted has every internal in L{internals.ALL}, and its
        write buffer works as the Sender assumes."""
        problems = internals.missing()
        self.assertEqual(problems, [], (
            "Twisted %s lacks internals xdiskd.io relies on:\n  %s" % (
                twisted.__version__, "\n  ".join(problems))))

    def test_reactorLacks(self):
        """A reactor without the epoll internals is told apart, by name."""
        problems = internals.reactorProblems(MemoryReactor())
        for name in ("_poller", "_selectables", "_doReadOrWrite",
                     "doPoll"):
            self.assertTrue(any(name in p for p in problems),
                            (name, problems))

    def test_transportLacks(self):
        """A transport without Twisted's write buffer is told apart."""
        problems = internals.transportProblems(StringTransport())
        for name in ("socket", "_tempDataBuffer", "dataBuffer", "offset",
                     "_aborting", "SEND_LIMIT"):
            self.assertTrue(any(name in p for p in problems),
                            (name, problems))

    def test_wrongKind(self):
        """An internal that is there but of another kind is named too."""
        class Odd:
            pass
        t = Odd()
        for item in internals.TRANSPORT:
            setattr(t, item.name, print if item.kind is not type(len)
                    else 0)
        problems = internals.transportProblems(t)
        self.assertTrue(any("_tempDataBuffer is a builtin_function" in p
                            for p in problems), problems)
        self.assertTrue(any("doRead is a int, not a callable" in p
                            for p in problems), problems)

    def test_bufferBehaviourChecked(self):
        """A transport whose write() no longer queues where the Sender
        looks is caught."""
        from twisted.internet.abstract import FileDescriptor
        names = [i.name for i in internals.TRANSPORT]

        class Elsewhere(FileDescriptor):
            socket = object()
            TLS = False
            _aborting = False

            def doRead(self):
                pass

            def write(self, data):
                self.hidden = data
        t = Elsewhere(MemoryReactor())
        self.assertEqual([n for n in names if not hasattr(t, n)], [])
        problems = internals.transportProblems(t)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("no longer queues", problems[0])


class ListCompleteTests(SynchronousTestCase):
    def test_everyPrivateNameListed(self):
        """Every private attribute xdiskd.io reads or calls that it does
        not define itself is in L{internals.ALL}: the list is the whole
        contract."""
        here = os.path.dirname(xdiskd.io.__file__)
        ours = set()
        used = {}
        for name in sorted(os.listdir(here)):
            if not name.endswith(".py") or name == "internals.py":
                continue
            tree = ast.parse(open(os.path.join(here, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    ours.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(
                        node.ctx, ast.Store):
                    ours.add(node.attr)
                elif (isinstance(node, ast.Assign)
                      and any(getattr(t, "id", None) == "__slots__"
                              for t in node.targets)):
                    ours.update(c.value for c in ast.walk(node.value)
                                if isinstance(c, ast.Constant))
            for node in ast.walk(tree):
                attr = None
                if (isinstance(node, ast.Attribute)
                        and isinstance(node.ctx, ast.Load)):
                    attr = node.attr
                elif (isinstance(node, ast.Call)
                      and getattr(node.func, "id", None) in (
                          "getattr", "hasattr")
                      and len(node.args) >= 2
                      and isinstance(node.args[1], ast.Constant)):
                    attr = node.args[1].value
                if (attr is not None and attr.startswith("_")
                        and not attr.startswith("__")):
                    used.setdefault(attr, name)
        listed = {i.name for i in internals.ALL}
        unlisted = {n: m for n, m in used.items()
                    if n not in ours and n not in listed}
        self.assertEqual(unlisted, {})
        # And the check looks at something: the names we know are used.
        self.assertTrue({"_poller", "_selectables", "_doReadOrWrite",
                         "_tempDataBuffer"} <= set(used))

"""
Tests for L{xdiskd.control.reload}: what a changed config file changes
in a daemon built by L{xdiskd.service.makeService} (not started: stores
inline, links not dialled), and what an invalid one does not.
"""

import os
import signal

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from xdiskd.control.api import ControlError
from xdiskd.control.reload import ReloadService, plan, readConfig
from xdiskd.options import Options
from xdiskd.service import makeService


class ReloadTests(TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.imgs = {}
        for name in ("a", "b", "c"):
            path = os.path.join(self.dir, name + ".img")
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            self.imgs[name] = path
        self.conf = os.path.join(self.dir, "xdiskd.conf")

    def write(self, exports=("a", "b"), connects=("A", "B"), extra=""):
        lines = ["[xdiskd]", "state-dir = " + self.dir, "inline-io = yes",
                 "no-control = yes", "no-nbd = yes"]
        if exports:
            lines.append("export =")
            lines += ["    %s" % (e if "=" in e else
                                  "serno/%s=%s" % (e, self.imgs[e]))
                      for e in exports]
        if connects:
            lines.append("connect =")
            lines += ["    unix:%s/%s.sock" % (self.dir, c)
                      for c in connects]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n" + extra)

    def ep(self, name):
        return "unix:%s/%s.sock" % (self.dir, name)

    def start(self, *args):
        self.write()
        options = Options()
        options.parseOptions(["--config", self.conf] + list(args))
        self.top = makeService(options, MemoryReactorClock())
        self.reloader = self.top.reloader
        self.assertIsInstance(self.reloader, ReloadService)
        return self.top

    def exports(self):
        return self.top.node.exporter.exports

    def reload(self):
        return self.successResultOf(self.reloader.reload())

    def rejected(self):
        f = self.failureResultOf(self.reloader.reload(), ControlError)
        self.assertIn("config rejected", str(f.value))
        return str(f.value)

    def test_exportsAndConnects(self):
        """Unchanged stays (same objects); changed, new, gone applied."""
        self.start()
        keepExport = self.exports()["serno/a"]
        keepConnector = self.top.connectors[self.ep("A")]
        self.write(exports=("a", "serno/b=%s,ro" % self.imgs["b"], "c"),
                   connects=("A", "C"))
        summary = self.reload()
        self.assertEqual(summary, dict(
            exportsAdded=["serno/c"], exportsRemoved=[],
            exportsChanged=["serno/b"], connectsAdded=[self.ep("C")],
            connectsRemoved=[self.ep("B")], needRestart=[]))
        self.assertIs(self.exports()["serno/a"], keepExport)
        self.assertTrue(self.exports()["serno/b"].spec.readOnly)
        self.assertIn("serno/c", self.exports())
        self.assertIs(self.top.connectors[self.ep("A")], keepConnector)
        self.assertEqual(sorted(self.top.connectors),
                         [self.ep("A"), self.ep("C")])
        # And back: b and c go, B returns.
        self.write(exports=("a",), connects=("A", "B"))
        summary = self.reload()
        self.assertEqual(sorted(summary["exportsRemoved"]),
                         ["serno/b", "serno/c"])
        self.assertEqual(list(self.exports()), ["serno/a"])
        self.assertEqual(sorted(self.top.connectors),
                         [self.ep("A"), self.ep("B")])

    def test_invalidFilesRejected(self):
        """Nothing changes; the file as last loaded stays the baseline."""
        self.start()
        before = (dict(self.exports()), list(self.top.connectors))
        cases = [
            ("unknown key", dict(extra="bogus = 1\n")),
            ("/nonexistent", dict(exports=("a", "c", "x=/nonexistent/d"))),
            ("bad connect", dict(connects=("A", "C"), extra="")),
            ("duplicate serial", dict(exports=(
                "a", "serno/a=%s" % self.imgs["c"]))),
            ("--max-io", dict(extra="max-io = 7\n")),
        ]
        for needle, kw in cases:
            self.write(**kw)
            if needle == "bad connect":
                with open(self.conf, "a") as f:
                    f.write("    bogus:endpoint\n")
            self.assertIn(needle, self.rejected())
            self.assertEqual((dict(self.exports()),
                              list(self.top.connectors)), before)
        # A good file after bad ones applies against the original.
        self.write(exports=("a", "b", "c"))
        self.assertEqual(self.reload()["exportsAdded"], ["serno/c"])
        self.flushLoggedErrors()

    def test_missingFileRejected(self):
        self.start()
        os.remove(self.conf)
        self.assertIn("cannot read config", self.rejected())

    def test_commandLineListsStay(self):
        """Lists the command line gave are not reloaded."""
        self.start("--export", "serno/cli=" + self.imgs["c"])
        self.assertEqual(list(self.exports()), ["serno/cli"])
        self.write(exports=("a",), connects=("C",))
        summary = self.reload()
        self.assertEqual(list(self.exports()), ["serno/cli"])
        self.assertEqual(summary["connectsAdded"], [self.ep("C")])

    def test_runTimeChangesKept(self):
        """Exports added with xdisk survive a reload that leaves them be."""
        from xdiskd.control import exports as X
        from xdiskd.export.spec import parseExportSpec
        self.start()
        spec = parseExportSpec("serno/rt=" + self.imgs["c"])
        X.add(self.top, spec, X.openFor(self.top, spec))
        self.write(exports=("a", "b"), connects=("A",))
        self.reload()
        self.assertIn("serno/rt", self.exports())

    def test_needRestart(self):
        self.start()
        self.write(extra="linger = 5\n")
        self.assertEqual(self.reload()["needRestart"], ["linger"])

    def test_plan(self):
        self.write()
        old = readConfig(self.conf)
        self.write(exports=("b", "c"), connects=())
        new = readConfig(self.conf)
        p = plan(old, new)
        self.assertEqual(p.removeExports, ["serno/a"])
        self.assertEqual([s.serial for s in p.addExports], ["serno/c"])
        self.assertEqual(p.removeConnects, [self.ep("A"), self.ep("B")])
        p = plan(old, new, fixed=("export", "connect"))
        self.assertEqual((p.removeExports, p.addExports, p.removeConnects),
                         ([], [], []))

    def test_sighupHandler(self):
        """Installed while running; the previous one is put back."""
        self.start()
        previous = signal.getsignal(signal.SIGHUP)
        self.reloader.startService()
        try:
            self.assertEqual(signal.getsignal(signal.SIGHUP),
                             self.reloader._sighup)
        finally:
            self.reloader.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

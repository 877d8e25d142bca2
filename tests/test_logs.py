"""Tests for L{xdiskd.control.logs} (C{--log-format json})."""

import io
import json

from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import TestCase

from xdiskd.control import logs
from xdiskd.options import Options


class FakeTwistdOptions(dict):
    """The keys of twistd's ServerOptions that matter here."""

    def __init__(self, **kw):
        dict.__init__(self, logger=None, logfile=None, nodaemon=True,
                      syslog=False)
        self.update(kw)


class JSONLogTests(TestCase):
    def test_observer(self):
        """One JSON object per line, structured fields kept, text added."""
        out = io.StringIO()
        observer = logs.jsonObserver(out)
        self.assertTrue(ILogObserver.providedBy(observer))
        log = Logger(observer=observer, namespace="t")
        log.info("{unit}: path added via {link}", unit="xa0", link="link1")
        log.warn("export {serial}: withdrawing", serial="serno/A")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = [json.loads(line) for line in lines]
        self.assertEqual((first["unit"], first["link"], first["log_text"]),
                         ("xa0", "link1", "xa0: path added via link1"))
        self.assertEqual(second["serial"], "serno/A")
        self.assertEqual(second["log_level"]["name"], "warn")

    def test_useJSON(self):
        saved = dict(logs._twistd)
        self.addCleanup(lambda: (logs._twistd.clear(),
                                 logs._twistd.update(saved)))
        parent = FakeTwistdOptions(logfile="/x/y.log", nodaemon=False)
        self.assertTrue(logs.useJSON(parent))
        self.assertEqual(parent["logger"], logs.OBSERVER)
        self.assertEqual(logs._twistd, dict(logfile="/x/y.log",
                                            nodaemon=False))
        # twistd's own --logger or --syslog wins.
        for kw in (dict(logger="my.observer"), dict(syslog=True)):
            parent = FakeTwistdOptions(**kw)
            self.assertFalse(logs.useJSON(parent))
            self.assertEqual(parent["logger"], kw.get("logger"))
        self.assertFalse(logs.useJSON(None))

    def test_option(self):
        """--log-format json points twistd at the JSON observer."""
        options = Options()
        options.parent = FakeTwistdOptions()
        options.parseOptions(["--log-format", "json", "--no-control"])
        self.assertEqual(options.parent["logger"], logs.OBSERVER)
        options = Options()
        options.parent = FakeTwistdOptions()
        options.parseOptions(["--no-control"])
        self.assertIsNone(options.parent["logger"])
        from twisted.python import usage
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          ["--log-format", "xml"])

"""
Tests for L{xdiskd.options}: a value that does not fit names the option
and the value, on the command line and in the config file, for our own
coercers and for a plain C{int}/C{float} one an option may be added
with.
"""

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from xdiskd.options import Options


class _WithPlainCoercers(Options):
    optParameters = Options.optParameters + [
        ["frob-seconds", None, 1.0, "A new option.", float],
        ["frob-count", None, 1, "Another.", int],
    ]


class CoercionMessageTests(SynchronousTestCase):
    def message(self, args, cls=Options):
        o = cls()
        e = self.assertRaises(usage.UsageError, o.parseOptions,
                              ["--no-control"] + args)
        return str(e)

    def test_ours(self):
        for args, text in [
                (["--linger", "abc"],
                 "--linger: 'abc' is not a number of seconds"),
                (["--linger", "-1"],
                 "--linger: '-1' is not a number of seconds"),
                (["--nbd-handshake-timeout", "0"],
                 "--nbd-handshake-timeout: '0' is not a positive number of "
                 "seconds"),
                (["--poll-us", "20000"],
                 "--poll-us: '20000' is not a number of microseconds (0 to "
                 "10000)"),
                (["--store-threads", "0"],
                 "--store-threads: '0' is not a number of threads (1 to "
                 "256)"),
                (["--socket-mode", "9"],
                 "--socket-mode: '9' is not an octal mode (e.g. 600)"),
                (["--log-format", "xml"],
                 "--log-format: 'xml' is not one of text, json")]:
            self.assertEqual(self.message(args), text)

    def test_plainCoercersNamed(self):
        """An option added with float or int still names itself."""
        self.assertEqual(self.message(["--frob-seconds", "x"],
                                      _WithPlainCoercers),
                         "--frob-seconds: 'x' is not a number")
        self.assertEqual(self.message(["--frob-count", "1.5"],
                                      _WithPlainCoercers),
                         "--frob-count: '1.5' is not a whole number")
        o = _WithPlainCoercers()
        o.parseOptions(["--no-control", "--frob-seconds", "2.5"])
        self.assertEqual(o["frob-seconds"], 2.5)

    def test_configFile(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[xdiskd]\nmax-io = big\n")
        self.assertEqual(self.message(["--config", path]),
                         "config %s: --max-io: 'big' is not a number of "
                         "bytes (512 to 1048576)" % (path,))

    def test_valuesStillParsed(self):
        o = Options()
        o.parseOptions(["--no-control", "--linger", "2.5", "--max-io",
                        "4096", "--socket-mode", "660"])
        self.assertEqual((o["linger"], o["max-io"], o["socket-mode"]),
                         (2.5, 4096, "660"))

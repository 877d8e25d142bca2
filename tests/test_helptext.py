"""
Tests for L{xdiskd.helptext} and the man pages in C{man/}: every option
has a --help group, no option name is broken across lines, the rules
and examples are there, and xdiskd(8) and xdisk(8) render and name every
option and command.  These fail when an option is added without a place
in L{xdiskd.helptext.LAYOUT} or a paragraph in its man page.
"""

import argparse
import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from xdiskd import __version__
from xdiskd.cli import parser as cliParser
from xdiskd.dmsg.limits import DEFAULT_LIMITS
from xdiskd.helptext import GROUPS, LAYOUT, OTHER, WIDTH, optionDocs
from xdiskd.options import Options
from tests.daemons import REPO

MAN = os.path.join(REPO, "man")
_OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def helpText():
    return str(Options())


def daemonOptions():
    return {o.name for o in optionDocs(Options())}


def cliOptions():
    """Every long option and command of xdisk, subcommands included."""
    names, commands = set(), set()

    def walk(p, prefix):
        for action in p._actions:
            names.update(s for s in action.option_strings
                         if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    commands.add(prefix + name)
                    walk(sub, prefix + name + " ")
    walk(cliParser(), "")
    return names, commands


def render(page):
    """A man page as plain text, through groff's man macros (as man-db
    renders it); warnings are errors."""
    if shutil.which("groff") is None:
        raise SkipTest("groff is missing (scripts/setup installs man-db)")
    path = os.path.join(MAN, page)
    p = subprocess.run(["groff", "-man", "-Tascii", "-ww", "-P-cbou", path],
                       capture_output=True, timeout=60)
    if p.returncode or p.stderr:
        raise AssertionError("%s does not render cleanly: %s" % (
            page, p.stderr.decode(errors="replace")))
    return p.stdout.decode("ascii")


def mentioned(text):
    return set(_OPTION.findall(text))


class HelpLayoutTests(SynchronousTestCase):
    def test_everyOptionHasAGroup(self):
        """An option without a place in LAYOUT lands under Other: add it."""
        ungrouped = sorted(daemonOptions() - set(LAYOUT))
        self.assertEqual(ungrouped, [],
                         "give these a group in xdiskd.helptext.LAYOUT")
        self.assertNotIn("\n%s:\n" % (OTHER,), helpText())

    def test_noStaleEntries(self):
        """LAYOUT names only options that exist, in known groups."""
        self.assertEqual(sorted(set(LAYOUT) - daemonOptions()), [])
        self.assertEqual({g for g, _ in LAYOUT.values()} - set(GROUPS),
                         set())

    def test_groupsInOrder(self):
        text = helpText()
        places = [text.index("\n%s:\n" % (g,)) for g in GROUPS]
        self.assertEqual(places, sorted(places))
        # Grouped, not alphabetical: --listen comes before --config.
        self.assertLess(text.index("--listen"), text.index("--config"))

    def test_noOptionNameBroken(self):
        """Every --word in --help is a whole option name, and no line is
        wider than the terminal."""
        text = helpText()
        names = {"--" + n for n in daemonOptions()}
        self.assertEqual(mentioned(text) - names, set())
        for line in text.splitlines():
            self.assertLessEqual(len(line), WIDTH, line)
            self.assertFalse(line.rstrip().endswith("-") and
                             not line.rstrip().endswith(" -"), line)
        self.assertIn("  --export SERIAL=PATH[,ro][,blksize=N]"
                      "[,label=HOST/DEV]\n", text)

    def test_everyOptionShown(self):
        text = helpText()
        for name in daemonOptions():
            self.assertRegex(text, r"\n  (-\w, )?--%s\b" % (re.escape(name),))

    def test_rulesAndExamples(self):
        """The export rules, each link limit with its default, examples."""
        text = " ".join(helpText().split())
        self.assertIn("at most 63 bytes", text)
        self.assertIn("a power of two from 512 to 65536", text)
        for name in DEFAULT_LIMITS._fields:
            self.assertRegex(text, r"\b%s=\d" % (name,))
        self.assertIn("buffered=8M", text)
        self.assertIn("stall=120", text)
        self.assertIn("Examples:", text)
        self.assertIn("twistd -n xdiskd --no-import --listen tcp:9870", text)

    def test_defaultsShown(self):
        text = " ".join(helpText().split())
        self.assertIn("--linger SECONDS Seconds an unused unit", text)
        self.assertIn("[default: 60]", text)
        # Flags have none (Twisted's tables give them 0).
        self.assertRegex(text, r"--relay Relay spans[^\[]*?\. --socket-mode")
        self.assertIn("--stall-timeout SECONDS", text)


class ManPageTests(SynchronousTestCase):
    def test_xdiskdRendersAndNamesEveryOption(self):
        text = render("xdiskd.8")
        missing = sorted({"--" + n for n in daemonOptions()} -
                         mentioned(text))
        self.assertEqual(missing, [], "document them in man/xdiskd.8")
        self.assertIn("XDISKD(8)", text)
        for section in ("SYNOPSIS", "OPTIONS", "EXPORTS", "LINK LIMITS",
                        "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
            self.assertIn("\n%s\n" % (section,), text)
        for name in DEFAULT_LIMITS._fields:
            self.assertIn(name, text)

    def test_xdiskRendersAndNamesEveryOptionAndCommand(self):
        text = render("xdisk.8")
        options, commands = cliOptions()
        self.assertEqual(sorted(options - mentioned(text)), [],
                         "document them in man/xdisk.8")
        for command in commands:
            self.assertRegex(text, r"\n       %s\b" % (command,),
                             "document %r in man/xdisk.8" % (command,))

    def test_versionsAgree(self):
        for page in ("xdiskd.8", "xdisk.8"):
            with open(os.path.join(MAN, page)) as f:
                head = f.read()
            self.assertIn('"xdiskd %s"' % (__version__,), head)

    def test_installedWithThePackage(self):
        """setup.cfg ships both pages under share/man/man8."""
        with open(os.path.join(REPO, "setup.cfg")) as f:
            cfg = f.read()
        self.assertRegex(cfg, r"share/man/man8 =\s+man/xdiskd\.8\s+"
                              r"man/xdisk\.8")

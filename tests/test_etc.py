"""
The files in etc/: the example config parses and mentions every option;
the systemd unit runs twistd in the foreground with this config and
reloads with SIGHUP.
"""

import configparser
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from xdiskd.options import Options
from tests.daemons import REPO

ETC = os.path.join(REPO, "etc")


def optionNames():
    names = {str(o[0]) for o in Options.optParameters + Options.optFlags}
    names.update(n[4:].replace("_", "-") for n in dir(Options)
                 if n.startswith("opt_"))
    return names - {"help", "version", "config"}


class ExampleConfigTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(ETC, "xdiskd.conf")
        with open(self.path) as f:
            self.text = f.read()

    def test_parses(self):
        options = Options()
        options.parseOptions(["--config", self.path])
        self.assertEqual(options["control"], "/var/lib/xdiskd/control.sock")

    def test_everyOption(self):
        """Every option appears as a key, set or commented out."""
        missing = [name for name in sorted(optionNames())
                   if not re.search(r"^#?\s*%s\s*=" % re.escape(name),
                                    self.text, re.M)]
        self.assertEqual(missing, [], "add them to etc/xdiskd.conf")


class SystemdUnitTests(SynchronousTestCase):
    def test_unit(self):
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str
        parser.read(os.path.join(ETC, "xdiskd.service"))
        service = parser["Service"]
        self.assertEqual(service["Type"], "simple")
        self.assertIn("twistd -n --pidfile= xdiskd --config "
                      "/etc/xdiskd/xdiskd.conf", service["ExecStart"])
        self.assertEqual(service["ExecReload"], "/bin/kill -HUP $MAINPID")
        for key, value in (("NoNewPrivileges", "yes"),
                           ("ProtectSystem", "strict"),
                           ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                           ("RestrictAddressFamilies",
                            "AF_UNIX AF_INET AF_INET6")):
            self.assertEqual(service[key], value)
        self.assertIn("/var/lib/xdiskd", service["ReadWritePaths"])


class ReadmeTests(SynchronousTestCase):
    def test_operationsOptionsDocumented(self):
        with open(os.path.join(REPO, "README.rst")) as f:
            readme = f.read()
        for name in ("control", "no-control", "metrics", "log-format"):
            self.assertIn("``--%s" % name, readme)
        self.assertIn("Operations\n==========", readme)

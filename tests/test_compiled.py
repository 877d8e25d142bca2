"""
The import guard of xdiskd/compiled.py: XDISKD_PURE loads the .py, and
a compiled module whose .py changed since it was built (or that the
manifest does not name) is never loaded in its place.  A real extension
module is built with Cython from a two-line package in a scratch
directory; each import runs in a fresh interpreter.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from xdiskd import compiled

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import Cython  # noqa: F401
except ImportError:
    Cython = None

PROBE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from xdiskd.compiled import Guard, isCompiled
    guard = Guard(sys.argv[2], ["pkgx.m"], pure=sys.argv[3] == "1")
    sys.meta_path.insert(0, guard)
    import pkgx.m
    print(json.dumps({"compiled": isCompiled(pkgx.m),
                      "value": pkgx.m.value(), "stale": guard.stale}))
""")


def _run(args, env=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))
    return p


class GuardTests(SynchronousTestCase):
    def setUp(self):
        if Cython is None:
            raise self.skipTest("Cython is not installed (scripts/setup "
                                "--test installs it)")
        self.top = tempfile.mkdtemp(prefix="xdcompiled-")
        self.addCleanup(shutil.rmtree, self.top, True)
        self.pkg = os.path.join(self.top, "pkgx")
        os.mkdir(self.pkg)
        open(os.path.join(self.pkg, "__init__.py"), "w").close()
        self.source = os.path.join(self.pkg, "m.py")
        with open(self.source, "w") as f:
            f.write("def value():\n    return 1\n")
        p = subprocess.run(
            [sys.executable, "-m", "Cython.Build.Cythonize", "-i", "-3",
             "-q", self.source], capture_output=True, text=True,
            timeout=300, cwd=self.top)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        self.assertIsNotNone(compiled.extensionPath(self.source))
        self.writeManifest(compiled.sourceHash(self.source))

    def writeManifest(self, sha):
        with open(os.path.join(self.pkg, compiled.MANIFEST), "w") as f:
            json.dump({"compiler": "Cython", "modules": {
                "pkgx.m": {"sha256": sha}}}, f)

    def probe(self, pure=False):
        p = _run([sys.executable, "-c", PROBE, self.top, self.pkg,
                  "1" if pure else "0"])
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout), p.stderr

    def test_builtLoadsCompiled(self):
        """A module whose .py has the manifest's hash: the .so loads."""
        got, err = self.probe()
        self.assertEqual(got, {"compiled": True, "value": 1, "stale": []})
        self.assertEqual(err, "")

    def test_pureLoadsSource(self):
        got, err = self.probe(pure=True)
        self.assertEqual(got, {"compiled": False, "value": 1, "stale": []})

    def test_editedSourceWins(self):
        """The .py edited after the build: it runs, with a warning."""
        with open(self.source, "w") as f:
            f.write("def value():\n    return 2\n")
        got, err = self.probe()
        self.assertEqual(got, {"compiled": False, "value": 2,
                               "stale": ["pkgx.m"]})
        self.assertIn("pkgx.m: the compiled module is stale", err)

    def test_unlistedModuleRefused(self):
        """An extension module the manifest does not name is stale."""
        os.unlink(os.path.join(self.pkg, compiled.MANIFEST))
        got, err = self.probe()
        self.assertEqual((got["compiled"], got["stale"]), (False, ["pkgx.m"]))

    def test_leftOverModuleRefused(self):
        """
        A module of the package no longer meant to be compiled (not in
        the guard's names) but with a build left beside it: refused too.
        """
        os.unlink(os.path.join(self.pkg, compiled.MANIFEST))
        p = _run([sys.executable, "-c", PROBE.replace('["pkgx.m"]',
                                                       '["pkgx.other"]'),
                  self.top, self.pkg, "0"])
        self.assertEqual(p.returncode, 0, p.stderr)
        got = json.loads(p.stdout)
        self.assertEqual((got["compiled"], got["stale"]), (False, ["pkgx.m"]))


class XdiskdBuildTests(SynchronousTestCase):
    def describe(self, env):
        p = _run([sys.executable, "-c", "import json, xdiskd.compiled as c; "
                  "print(json.dumps([c.describe(), c.status()]))"], env)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def test_pureEnv(self):
        """XDISKD_PURE=1: every hot module from its .py, whatever is built."""
        line, status = self.describe({compiled.PURE_ENV: "1"})
        self.assertEqual(line, "compiled: no (XDISKD_PURE=1: pure Python)")
        self.assertEqual((status["compiled"], status["pure"]),
                         ([], list(compiled.MODULES)))

    def test_buildMatchesTree(self):
        """
        Without XDISKD_PURE, the modules with an extension module beside
        them load compiled (none stale: scripts/compile is up to date),
        the others from .py.
        """
        line, status = self.describe({compiled.PURE_ENV: ""})
        built = [name for name in compiled.MODULES if compiled.extensionPath(
            os.path.join(REPO, *name.split(".")) + ".py")]
        self.assertEqual((status["compiled"], status["stale"]), (built, []),
                         line)
        self.assertTrue(line.startswith("compiled: "), line)


class ArtefactTests(SynchronousTestCase):
    def test_ignoredByGit(self):
        """What scripts/compile writes can never be committed."""
        if not os.path.isdir(os.path.join(REPO, ".git")) and not \
                os.path.isfile(os.path.join(REPO, ".git")):
            raise self.skipTest("not a git checkout")
        import importlib.machinery
        paths = ["xdiskd/dmsg/wire" + importlib.machinery.EXTENSION_SUFFIXES[0],
                 "xdiskd/dmsg/wire.c", "xdiskd/xa/unit.c",
                 "xdiskd/" + compiled.MANIFEST, "build/compile/x.o"]
        p = subprocess.run(["git", "check-ignore"] + paths, cwd=REPO,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(sorted(p.stdout.split()), sorted(paths), p.stderr)

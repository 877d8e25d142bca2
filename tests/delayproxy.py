"""
A UNIX-socket proxy that delays every byte by a fixed time each way,
without limiting throughput: a slow path made of real sockets (this
kernel has no tc netem).  Each direction has a reader thread, which
stamps what it reads, and a writer thread, which sends each piece once
its stamp is C{delay} old.
"""

import os
import queue
import socket
import threading
import time


class DelayProxy:
    def __init__(self, listen, target, delay):
        self.listen = listen
        self.target = target
        self.delay = delay
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(listen)
        os.chmod(listen, 0o600)
        self.server.listen(8)
        self.sockets = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        for s in [self.server] + self.sockets:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self):
        while not self.closed:
            try:
                a, _ = self.server.accept()
            except OSError:
                return
            b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                b.connect(self.target)
            except OSError:
                a.close()
                continue
            self.sockets += [a, b]
            for src, dst in ((a, b), (b, a)):
                q = queue.Queue()
                threading.Thread(target=self._read, args=(src, q),
                                 daemon=True).start()
                threading.Thread(target=self._write, args=(dst, q),
                                 daemon=True).start()

    def _read(self, src, q):
        while True:
            try:
                data = src.recv(1 << 20)
            except OSError:
                data = b""
            q.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, dst, q):
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return

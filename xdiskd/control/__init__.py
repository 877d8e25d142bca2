"""
Running a daemon: the control socket and its JSON API (L{server},
L{api}), the C{xdisk} command's client side (L{client}, stdlib only),
Prometheus metrics (L{metrics}), run-time export changes shared by the
API and SIGHUP reload (L{exports}, L{reload}) and the JSON log format
(L{logs}).
"""

"""Run a WSGI app on a free localhost port in a background thread.

Shared by the vendor stand-ins under ``tests/standins``: each stand-in is a
plain WSGI app, and tests (or the standalone ``python -m`` entry points) use
``start_server`` to expose it over real HTTP so that the real vendor client
libraries can talk to it exactly as they would talk to the vendor.
"""

import threading

from werkzeug.serving import make_server


def start_server(wsgi_app, host="127.0.0.1", port=0):
    """Serve ``wsgi_app`` on ``host``:``port`` (0 = any free port) in a daemon thread.

    Returns ``(base_url, stop)``; ``base_url`` has no trailing slash and
    ``stop()`` shuts the server down and closes its socket (safe to call twice).
    The server is threaded so a stand-in can call back into the app under
    test (e.g. deliver a webhook) while the app is itself calling the stand-in.
    """
    server = make_server(host, port, wsgi_app, threaded=True)
    # A short poll interval keeps stop() (which waits for the loop to notice)
    # from adding half a second to every test teardown.
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="standin-server-%d" % server.server_port,
        daemon=True,
    )
    thread.start()
    stopped = threading.Event()

    def stop():
        """Stop serving and release the port; idempotent."""
        if stopped.is_set():
            return
        stopped.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return "http://%s:%d" % (host, server.server_port), stop

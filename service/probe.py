"""`python -m lsmseg.service.probe [PATH]`: exit 0 when the worker on this host answers PATH (default
/healthz) 2xx.

The container health check: standard library only (no curl in the image, no torch import), port from
LSMSEG_PORT like the server's own.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "/healthz"
    url = f"http://127.0.0.1:{os.environ.get('LSMSEG_PORT', '8000')}{path}"
    # No proxies: an HTTP(S)_PROXY in the container's environment must not catch a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=float(os.environ.get("LSMSEG_PROBE_TIMEOUT_S", "4"))) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:  # HTTPError (4xx/5xx) is a URLError
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

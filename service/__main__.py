"""`python -m lsmseg.service` / `lsmseg-serve`: one uvicorn worker (one model per process) with the settings.

Every setting is an LSMSEG_* environment variable or a flag: `lsmseg-serve --port 9000 --redis-url ...`.
"""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

from lsmseg.service.settings import Settings

# The model thread releases the GIL inside every torch call and must take it back before the next one;
# while the event loop runs Python (h11, JSON), that wait is up to the switch interval, 5 ms by default, per
# call. Edge refinement alone makes ~700 calls an image, so under load small requests' model time doubled.
# At 0.5 ms the poisoned p95 of benchmarks/service_load.py fell from ~390 to ~240 ms (docs/benchmarks.md).
_GIL_SWITCH_INTERVAL_S = 0.0005


def main() -> int:
    try:
        settings = Settings(_cli_parse_args=True, _cli_prog_name="lsmseg-serve", _cli_kebab_case=True)
    except ValidationError as exc:
        print(f"lsmseg-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Imported only now: torch takes seconds to import, and a typo in a setting should not wait for it.
    import uvicorn

    from lsmseg.service.app import create_app
    from lsmseg.service.loader import ModelConfigError

    try:
        app = create_app(settings)
    except ModelConfigError as exc:
        print(f"lsmseg-serve: cannot start: {exc}", file=sys.stderr)
        return 2
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)
    # One worker on purpose: the model lives in this process, and batching needs all requests in one place.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        workers=1,
        # h11 whatever else is installed: its framing rules are the ones service/limits.py completes.
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

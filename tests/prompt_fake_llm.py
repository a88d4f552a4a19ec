"""A small chat-completions server for the prompt_cache tests: real HTTP on localhost, scripted replies."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SUBJECT = re.compile(r"Describe an? (.+?)(?: \(also called: .*?\))? with respect to")


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def chat_body(content: str) -> str:
    message = {"role": "assistant", "content": content}
    return json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": message}]})


def good_content(subject: str) -> str:
    return json.dumps(
        {
            "size": f"A {subject} is about as big as a kitchen table.",
            "shape": f"A {subject} has a boxy outline with rounded corners.",
            "texture": f"A {subject} has a smooth, slightly glossy surface.",
            "colour": f"A {subject} is usually grey, white or dark blue.",
            "combined": f"A {subject} is a table-sized, boxy object with a smooth grey or white surface.",
        }
    )


class FakeLLM:
    """Answers each POST with the next scripted Reply, or a good answer for the requested class."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.script: deque[Reply] = deque()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append(dict(self.headers))
                    reply = fake.script.popleft() if fake.script else None
                if reply is None:
                    reply = Reply(body=chat_body(good_content(fake.subject_of(body))))
                time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def subject_of(request: dict) -> str:
        found = _SUBJECT.search(request["messages"][-1]["content"])
        return found.group(1) if found else "thing"

    def subjects(self) -> list[str]:
        return [self.subject_of(request) for request in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""An STS endpoint that refuses every AssumeRole with ValidationError (HTTP 400), in
STS's own wire format (the query protocol's XML error document), and counts the calls.

moto's AssumeRole accepts every request the operator can send (it ignores trust
policies, durations and whether the role exists), so a real refusal needs this: boto3
and botocore run unmodified against it, through their standard AWS_ENDPOINT_URL_STS.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
REFUSAL = (
    f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>ValidationError</Code>'
    "<Message>1 validation error detected</Message></Error><RequestId>r</RequestId>"
    "</ErrorResponse>"
)
CALLER = (
    f'<GetCallerIdentityResponse xmlns="{NS}"><GetCallerIdentityResult>'
    "<Arn>arn:aws:iam::123456789012:user/cloudcred-operator</Arn>"
    "<UserId>AIDAOPERATOR</UserId><Account>123456789012</Account>"
    "</GetCallerIdentityResult><ResponseMetadata><RequestId>r</RequestId>"
    "</ResponseMetadata></GetCallerIdentityResponse>"
)


@dataclass
class RefusingSts:
    url: str
    assume_role_calls: int = 0


def start_refusing_sts() -> tuple[RefusingSts, ThreadingHTTPServer]:
    sts = RefusingSts("")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            action = parse_qs(self.rfile.read(length).decode()).get("Action", [""])[0]
            if action == "AssumeRole":
                with lock:
                    sts.assume_role_calls += 1
                status, body = 400, REFUSAL
            elif action == "GetCallerIdentity":  # the operator's own identity
                status, body = 200, CALLER
            else:
                status, body = 400, REFUSAL
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sts.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return sts, server

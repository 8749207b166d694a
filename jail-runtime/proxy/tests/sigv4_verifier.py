"""An AWS SigV4 verifier on loopback, for jail-runtime/proxy/tests/sigv4.rs.

Usage: python3 sigv4_verifier.py ACCESS_KEY_ID SECRET_ACCESS_KEY [SESSION_TOKEN]
Prints "PORT <n>" once listening on 127.0.0.1. Every request is checked against the REAL keys:
the request signature with botocore's own SigV4 signer (SigV4Auth, S3SigV4Auth for s3) over the
received method, URL, signed headers and body at the request's x-amz-date; aws-chunked chunk
and trailer signatures (which botocore does not produce) by an independent recomputation with
hmac/hashlib following the S3 streaming spec (sigv4-streaming, sigv4-streaming-trailers).
Answers 200 {"ok": true, ...} or 403 {"error": "..."}.
With VERIFIER_TLS_CERT and VERIFIER_TLS_KEY (PEM files) set it serves HTTPS.
"""

import datetime
import hashlib
import hmac
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AKID = sys.argv[1]
SECRET = sys.argv[2]
TOKEN = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = datetime.timedelta(minutes=5)


class Reject(Exception):
    pass


def parse_authorization(value):
    algorithm, _, rest = value.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise Reject("algorithm is not AWS4-HMAC-SHA256")
    fields = {}
    for part in rest.replace(",", " ").split():
        key, _, val = part.partition("=")
        fields[key] = val
    try:
        akid, date, region, service, terminator = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except (KeyError, ValueError):
        raise Reject("malformed Authorization header")
    if terminator != "aws4_request":
        raise Reject("credential scope does not end in aws4_request")
    return akid, date, region, service, signed, signature


def signing_key(date, region, service):
    # Independent of botocore: kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region),
    # service), "aws4_request").
    key = ("AWS4" + SECRET).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def verify_chunked(body, timestamp, scope, key, seed, trailer_expected):
    """Decodes an aws-chunked body, checking every chunk signature (and the trailer's)."""
    previous, pos, decoded, chunks = seed, 0, bytearray(), 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            raise Reject("aws-chunked: no chunk header")
        size_hex, sep, signature = body[pos:end].decode().partition(";chunk-signature=")
        if not sep:
            raise Reject("aws-chunked: chunk header without chunk-signature")
        size = int(size_hex, 16)
        pos = end + 2
        data = body[pos : pos + size]
        if len(data) != size:
            raise Reject("aws-chunked: truncated chunk")
        pos += size
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                timestamp,
                scope,
                previous,
                EMPTY_SHA256,
                hashlib.sha256(data).hexdigest(),
            ]
        )
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise Reject(f"aws-chunked: signature of chunk {chunks} does not match")
        previous = signature
        chunks += 1
        decoded += data
        if size == 0:
            break
        if body[pos : pos + 2] != b"\r\n":
            raise Reject("aws-chunked: chunk not followed by CRLF")
        pos += 2
    lines = body[pos:].decode().split("\r\n")
    if lines[-2:] != ["", ""] or any(not line for line in lines[:-2]):
        raise Reject("aws-chunked: bad ending after the final chunk")
    trailers = [line.partition(":") for line in lines[:-2]]
    signature = [v for (k, _, v) in trailers if k.lower() == "x-amz-trailer-signature"]
    headers = [(k.lower(), v.strip()) for (k, _, v) in trailers if k.lower() != "x-amz-trailer-signature"]
    if trailer_expected != bool(signature):
        raise Reject("aws-chunked: trailer signature expected iff the payload mode has a trailer")
    if signature:
        canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers))
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-TRAILER",
                timestamp,
                scope,
                previous,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature[0]):
            raise Reject("aws-chunked: trailer signature does not match")
    return bytes(decoded), chunks, dict(headers)


def verify(method, path, headers, body):
    authorization = headers.get("Authorization")
    if authorization is None:
        raise Reject("no Authorization header")
    akid, date, region, service, signed, signature = parse_authorization(authorization)
    if akid != AKID:
        raise Reject("the access key id is not the real one")
    timestamp = headers.get("X-Amz-Date") or ""
    try:
        at = datetime.datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ")
    except ValueError:
        raise Reject("no valid x-amz-date")
    if abs(datetime.datetime.utcnow() - at) > MAX_SKEW or timestamp[:8] != date:
        raise Reject("x-amz-date is not now, or not the scope's date")
    token = headers.get("X-Amz-Security-Token")
    if TOKEN is not None and (token != TOKEN or "x-amz-security-token" not in signed):
        raise Reject("the real session token is not there, or not signed")
    if TOKEN is None and token is not None:
        raise Reject("a session token is there, but the real keys have none")

    request = AWSRequest(method=method, url="https://" + headers.get("Host", "") + path, data=body)
    for name in signed:
        values = headers.get_all(name)
        if not values:
            raise Reject(f"signed header {name} is missing")
        for value in values:
            request.headers[name] = value
    request.context["timestamp"] = timestamp
    credentials = Credentials(AKID, SECRET, TOKEN)
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, region)
    canonical = signer.canonical_request(request)
    botocore_signed = signer.signed_headers(signer.headers_to_sign(request))
    if botocore_signed != ";".join(signed):
        raise Reject(f"SignedHeaders {';'.join(signed)} is not what botocore signs: {botocore_signed}")
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signature):
        raise Reject("signature does not match")

    result = {"ok": True, "service": service, "region": region, "signed_headers": signed}
    content_sha256 = headers.get("X-Amz-Content-SHA256")
    payload = body
    if content_sha256 in ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"):
        scope = f"{date}/{region}/{service}/aws4_request"
        key = signing_key(date, region, service)
        trailer = content_sha256.endswith("-TRAILER")
        payload, chunks, trailers = verify_chunked(body, timestamp, scope, key, signature, trailer)
        declared = headers.get("X-Amz-Decoded-Content-Length")
        if declared is not None and int(declared) != len(payload):
            raise Reject("x-amz-decoded-content-length does not match the decoded body")
        result["chunks"] = chunks
        result["trailers"] = trailers
    elif content_sha256 not in (None, "UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"):
        if hashlib.sha256(body).hexdigest() != content_sha256:
            raise Reject("x-amz-content-sha256 is not the body's hash")
    result["body_sha256"] = hashlib.sha256(payload).hexdigest()
    return result


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def answer(self):
        body = self.read_body()
        try:
            status, reply = 200, verify(self.command, self.path, self.headers, body)
        except Reject as e:
            status, reply = 403, {"error": str(e)}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if os.environ.get("VERIFIER_TLS_CERT"):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.environ["VERIFIER_TLS_CERT"], os.environ["VERIFIER_TLS_KEY"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()

#!/usr/bin/env python3
"""An independent OTLP logs receiver for the tests: the reference Python
gRPC stack (grpcio) serving the LogsService generated from the OTLP protos
(opentelemetry-proto), or, with --protocol http, Python's http.server
decoding OTLP/HTTP protobuf POSTs with the same messages.

Prints {"listening": PORT} once bound, then one JSON object per log record
received: its times, severity, event name, body, attributes (values as
JSON: strings, integers, lists), the resource's attributes and the scope.
"""
import argparse
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

lock = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind is None:
        return None
    return getattr(v, kind)


def attributes(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            raise ValueError(f"attribute {kv.key} appears twice")
        out[kv.key] = value(kv.value)
    return out


def emit(request):
    lines = []
    for rl in request.resource_logs:
        resource = attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            scope = {"name": sl.scope.name, "version": sl.scope.version}
            for r in sl.log_records:
                lines.append(json.dumps({
                    "time_unix_nano": r.time_unix_nano,
                    "observed_time_unix_nano": r.observed_time_unix_nano,
                    "severity_number": r.severity_number,
                    "severity_text": r.severity_text,
                    "event_name": r.event_name,
                    "body": value(r.body),
                    "attributes": attributes(r.attributes),
                    "resource": resource,
                    "scope": scope,
                }))
    with lock:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        emit(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/logs" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404 if self.path != "/v1/logs" else 415)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        request = logs_service_pb2.ExportLogsServiceRequest()
        request.ParseFromString(body)
        emit(request)
        answer = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.protocol == "grpc":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
        if port == 0:
            sys.exit(f"cannot bind 127.0.0.1:{args.port}")
        server.start()
        print(json.dumps({"listening": port}), flush=True)
        server.wait_for_termination()
    else:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), Http)
        print(json.dumps({"listening": server.server_address[1]}), flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

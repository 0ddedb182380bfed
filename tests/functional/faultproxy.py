"""A small HTTP proxy in front of cinder-api that injects faults.

Rules match a method and a path pattern and act on the next N matching
requests: ``500``/``503`` (answer without forwarding), ``after-500`` /
``after-503`` (forward, so the call takes effect, then answer with the
error), ``reset`` (close the connection without an answer), ``delay:S``
(wait S seconds, then forward), ``hang-after:S`` (forward, then keep the
client waiting S seconds for the answer: a timeout after the call took
effect) or a callable (called, then the request is forwarded).
Everything else is forwarded unchanged.
"""

import http.client
import http.server
import json
import re
import socket
import threading
import time


class Rule:
    def __init__(self, method, pattern, action, times=1):
        self.method = method
        self.pattern = re.compile(pattern)
        self.action = action
        self.times = times
        self.hits = 0

    def matches(self, method, path):
        return (self.hits < self.times and method == self.method and
                self.pattern.search(path.split('?')[0]))


class FaultProxy:
    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.rules = []
        self.seen = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                      Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever,
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def inject(self, method, pattern, action, times=1):
        rule = Rule(method, pattern, action, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self):
        with self._lock:
            self.rules = []

    def _rule_for(self, method, path):
        with self._lock:
            self.seen.append((method, path))
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule.action
        return None

    def _handle(self, req):
        length = int(req.headers.get('Content-Length') or 0)
        body = req.rfile.read(length) if length else None
        action = self._rule_for(req.command, req.path)
        if callable(action):            # e.g. stop a service, then forward
            action()
            action = None
        if action == 'reset':
            req.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER,
                b'\x01\x00\x00\x00\x00\x00\x00\x00')
            req.close_connection = True
            req.connection.close()
            return
        if action in ('500', '503'):
            return self._answer(req, int(action), 'injected')
        if action and action.startswith('delay:'):
            time.sleep(float(action.split(':')[1]))
        status, headers, data = self._forward(req, body)
        if action and action.startswith('hang-after:'):
            time.sleep(float(action.split(':')[1]))
        if action in ('after-500', 'after-503'):
            return self._answer(req, int(action[6:]),
                                'injected after the call took effect')
        req.send_response(status)
        for key, value in headers:
            if key.lower() not in ('transfer-encoding', 'connection',
                                   'content-length'):
                req.send_header(key, value)
        req.send_header('Content-Length', str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _forward(self, req, body):
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        headers = {k: v for k, v in req.headers.items()
                   if k.lower() not in ('host', 'connection')}
        conn.request(req.command, req.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, resp.getheaders(), data

    def _answer(self, req, status, message):
        # the shape of an OpenStack API fault, as cinderclient parses it
        data = json.dumps({'computeFault': {
            'code': status, 'message': 'fault proxy: %s' % message}}).encode()
        req.send_response(status)
        req.send_header('Content-Type', 'application/json')
        req.send_header('Content-Length', str(len(data)))
        req.end_headers()
        req.wfile.write(data)

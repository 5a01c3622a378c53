#!/usr/bin/python3
"""A supervisor worker in Python's standard library only (Debian's python3).

It serves HTTP on the socket the supervisor passes as fd 3 (standalone: on
$PORT) and speaks the worker protocol on $NOTIFY_SOCKET: READY=1 once
serving, WATCHDOG=1 every WATCHDOG_USEC/2, X_REQUESTS=N every 0.25 s when N
changed. On SIGTERM it stops accepting, finishes the requests it accepted,
and exits 0.  Run:  supervisor -- /usr/bin/python3 worker.py
GET /sleep?s=0.5 answers after half a second (an in-flight request).
"""
import http.server
import os
import signal
import socket
import threading
import time
import urllib.parse


def notify(state):
    """Send one sd_notify datagram; without NOTIFY_SOCKET, do nothing."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # a leading '@' is the abstract namespace
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)


def listener():
    """The inherited socket (fd 3) when passed to this process, else :$PORT."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        sock = socket.socket(fileno=3)
    else:
        sock = socket.create_server(("", int(os.environ.get("PORT", "8080"))))
    sock.setblocking(False)  # select then accept: a sibling may win the connection
    return sock


requests = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global requests
        with lock:
            requests += 1
        url = urllib.parse.urlsplit(self.path)
        self.send_response(200)
        self.end_headers()  # sent now: the client knows the request is in flight
        if url.path == "/sleep":
            time.sleep(float(urllib.parse.parse_qs(url.query).get("s", ["1"])[0]))
        self.wfile.write(f"hello from pid {os.getpid()}\n".encode())

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every request thread


def report(stop):
    """WATCHDOG=1 every WATCHDOG_USEC/2; X_REQUESTS=N every 0.25 s when changed."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        usec = 0
    beat, sent, next_beat = usec / 2e6, 0, 0.0
    while not stop.wait(min(0.25, beat or 0.25)):
        if beat and time.monotonic() >= next_beat:
            notify("WATCHDOG=1")
            next_beat = time.monotonic() + beat
        if requests != sent:
            sent = requests
            notify(f"X_REQUESTS={sent}")


def main():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # for sigwait, in every thread
    server = Server(("", 0), Handler, bind_and_activate=False)
    server.socket = listener()
    serving = threading.Thread(target=server.serve_forever, args=(0.1,))
    serving.start()
    stop = threading.Event()
    reporter = threading.Thread(target=report, args=(stop,))
    reporter.start()
    notify("READY=1")

    signal.sigwait({signal.SIGTERM})
    notify("STOPPING=1")
    server.shutdown()      # 1. stop accepting: the queue stays for the other workers
    server.server_close()  # 2. close the socket, finish every accepted request
    stop.set()
    reporter.join()
    notify(f"X_REQUESTS={requests}")


if __name__ == "__main__":
    main()

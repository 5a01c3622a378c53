"""A tiny WSGI app for the gunicorn peer test and benchmark.

gunicorn is a pre-fork server: the supervisor's worker is gunicorn's own
arbiter, and its children answer. They share the arbiter's process group,
whose id is the supervisor worker's pid, so that is what the app reports.
"""
import os


def app(environ, start_response):
    body = f"hello from pid {os.getpgrp()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

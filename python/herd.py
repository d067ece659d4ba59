"""herd's helper for Python apps run by herd (stdlib only; vendor this file beside your code).

    import herd
    herd.expose_metrics()   # this instance's prometheus_client registry in herd's /metrics

It speaks on the instance's channel (`HERD_IPC_FD`: one JSON object per line each way; the
messages of crates/proto/src/worker.rs, described in docs/bus.md and docs/metrics.md) from a
daemon thread: it offers the instance's metrics once (`{"herd":"metrics_offer"}`) and answers
every scrape (`{"herd":"scrape","id":N}`) with `{"herd":"metrics","reply_to":N,"text":…}`, the
registry's exposition text. Outside herd (no HERD_IPC_FD) it does nothing.
"""
import json
import os
import threading

_lock = threading.Lock()
_started = False


def _channel():
    fd = os.environ.get("HERD_IPC_FD")
    if fd is None or not fd.isdigit():
        return None
    try:
        return os.fdopen(int(fd), "r+b", buffering=0)
    except OSError:
        return None


def _send(ch, msg):
    with _lock:
        ch.write(json.dumps(msg).encode() + b"\n")


def expose_metrics(registry=None):
    """Offers `registry` (prometheus_client's default REGISTRY when None) to herd's Prometheus
    endpoint. Returns False outside herd."""
    global _started
    ch = _channel()
    if ch is None:
        return False
    if registry is None:
        from prometheus_client import REGISTRY as registry  # noqa: N811
    from prometheus_client import generate_latest

    if _started:
        return True
    _started = True

    def serve():
        buf = b""
        while True:
            try:
                chunk = os.read(ch.fileno(), 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("herd") == "scrape":
                    try:
                        text = generate_latest(registry).decode()
                    except Exception:  # a collector that fails must not kill the thread
                        text = ""
                    _send(ch, {"herd": "metrics", "reply_to": msg.get("id"), "text": text})

    threading.Thread(target=serve, name="herd-metrics", daemon=True).start()
    _send(ch, {"herd": "metrics_offer"})
    return True

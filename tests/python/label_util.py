"""Shared by the labeling tests: start `rlhf label serve` on a free port, call its JSON API,
send it raw bytes."""
import http.client, json, os, socket, subprocess, threading, time

BUILD = os.environ["RLHF_BUILD"]
DATA = os.environ["RLHF_DATA"]
RLHF = os.path.join(BUILD, "bin", "rlhf")


class Server:
    """`rlhf label serve ARGS --port 0`; `port` is read from its "serving http://..." line."""

    def __init__(self, args, timeout=60):
        self.proc = subprocess.Popen([RLHF, "label", "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.port, self.lines = None, []
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("serving http://") and not ready.is_set():
                    self.port = int(line.split()[1].rstrip("/").rsplit(":", 1)[1])
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            self.proc.kill()
            raise AssertionError(f"server did not start: {self.lines} {self.proc.stderr.read()}")

    def kill(self, sig=None):
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
        self.proc.wait(30)


class Client:
    """One labeler's keep-alive connection."""

    def __init__(self, port):
        self.port, self.session, self.conn = port, None, None

    def call(self, method, path, body=None, session=None):
        headers = {"Content-Type": "application/json"}
        sess = session if session is not None else self.session
        if sess:
            headers["Authorization"] = f"Bearer {sess}"
        data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        for attempt in range(2):  # a kept-alive connection the server closed: reconnect once
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                res = self.conn.getresponse()
                raw = res.read()
                return res.status, (json.loads(raw) if raw else None)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise

    def sign_in(self, name, token):
        status, body = self.call("POST", "/api/signin", {"name": name, "token": token})
        assert status == 200, (status, body)
        self.session = body["session"]
        return body


def ranking_best_first(task):
    """The ranking that orders completions by their text (a labeler with a taste for 'a' < 'b')."""
    cs = sorted(task["completions"], key=lambda c: c["text"])
    return [c["id"] for c in cs]


def rss_kb(pid):
    """Resident memory of a process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def send_raw(port, head, pieces=(), timeout=20):
    """Sends `head` then each of `pieces` (bytes) on a new connection, stopping when the server
    closes or resets it. Returns (bytes sent, the reply's status or None, its body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sent = 0
    try:
        for piece in (head, *pieces):
            s.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    raw = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None
    return sent, status, raw.partition(b"\r\n\r\n")[2]


class PipelineRun:
    """`rlhf pipeline CFG` in the background, its stdout collected in `out`; `wait_for_page()`
    returns the port of the labeling page it serves (from its "serving http://HOST:PORT" line)."""

    def __init__(self, cfg, env=None):
        self.proc = subprocess.Popen([RLHF, "pipeline", cfg], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.out, self._port, self._ready = [], [], threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.out.append(line)
            if line.startswith("serving http://"):
                self._port.append(int(line.split()[1].rstrip("/").rsplit(":", 1)[1]))
                self._ready.set()

    def wait_for_page(self, timeout):
        assert self._ready.wait(timeout), ("the pipeline never served the labeling page", self.out,
                                           self.proc.stderr.read() if self.proc.poll() is not None else "")
        return self._port[0]

    def finish(self, timeout=600):
        """Waits for the exit; returns (exit code, stdout, stderr)."""
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc, "".join(self.out), self.proc.stderr.read()

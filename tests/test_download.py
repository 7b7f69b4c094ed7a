"""Getting CIFAR-10 from copies served by local HTTP servers (127.0.0.1 only, one thread per
request, stopped after each test): a fast copy, a slow one, a wrong file, a 503, one that
closes half-way, Range resumes, a course's own copy, Ctrl-C. The archive is a tiny one in
torchvision's format; the checksum constants are replaced by its own."""
import hashlib
import http.server
import io
import os
import signal
import tarfile
import threading
import time
import _thread

import pytest

import common
from conftest import load_script, run_main, write_tiny_cifar


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny cifar-10-python.tar.gz as bytes (about 1.2 MB: random pixels do not compress)."""
    root = tmp_path_factory.mktemp("archive")
    write_tiny_cifar(str(root))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buffer.getvalue()


class Copy(http.server.BaseHTTPRequestHandler):
    """Serves server.body as the server's kind says; records each request's path and Range."""

    def do_GET(self):
        server, body, start = self.server, self.server.body, 0
        server.requests.append((self.path, self.headers.get("Range")))
        if server.kind == "503":
            return self.send_error(503)
        if server.kind == "wrong":  # the right size, other bytes
            body = bytes(len(body))
        if server.kind == "range" and self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)  # a server that ignores Range sends the whole file
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        body = body[start:]
        if server.kind == "cut":  # half the bytes, then the connection closes
            body = body[:len(body) // 2]
        step = 400 if server.kind == "slow" else 1 << 16
        for i in range(0, len(body), step):
            if server.stop.is_set():
                break
            self.wfile.write(body[i:i + step])
            if server.kind == "slow":  # 4 kB/s
                time.sleep(0.1)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve(archive, tiny_cifar, monkeypatch):
    """serve(kind) -> the URL of a new local copy of kind; CIFAR10_SOURCES emptied, the checks
    set to the tiny archive (tiny_cifar: torchvision's own md5 checks accept our files)."""
    servers = []
    monkeypatch.setattr(common, "CIFAR10_SOURCES", [])
    monkeypatch.setattr(common, "CIFAR10_SIZE", len(archive))
    monkeypatch.setattr(common, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(common, "CIFAR10_SHA256", hashlib.sha256(archive).hexdigest())
    monkeypatch.delenv("CIFAR10_URL", raising=False)

    def start(kind):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Copy)
        server.daemon_threads, server.kind, server.body = True, kind, archive
        server.requests, server.stop = [], threading.Event()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/{kind}/cifar-10-python.tar.gz"

    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def get(tmp_path, capsys):
    """get_data('cifar10') on tmp_path/data (tiny_cifar's files are in tmp_path); returns
    (kind or the DataError, what it printed)."""
    try:
        kind = common.get_data("cifar10", str(tmp_path / "data"), log=print)["kind"]
    except common.DataError as err:
        kind = err
    return kind, capsys.readouterr().out


def test_a_fast_copy_is_verified_and_unpacked(serve, tmp_path, capsys):
    server, url = serve("fast")
    common.CIFAR10_SOURCES.append(url)
    kind, out = get(tmp_path, capsys)
    assert kind == "cifar10" and len(server.requests) == 1
    assert "one-time" in out and "--data synthetic" in out and "--image PICTURE" in out
    assert "127.0.0.1: 1.2 of 1.2 MB" in out and "MB/s" in out  # a progress line
    assert sorted(os.listdir(tmp_path / "data")) == ["cifar-10-batches-py",
                                                     "cifar-10-python.tar.gz"]


def test_a_slow_copy_is_left_for_the_next(serve, tmp_path, capsys):
    slow, slow_url = serve("slow")
    fast, fast_url = serve("fast")
    common.CIFAR10_SOURCES[:] = [slow_url, fast_url]
    began = time.perf_counter()
    kind, out = get(tmp_path, capsys)
    took = time.perf_counter() - began
    assert kind == "cifar10" and len(fast.requests) == 1
    assert "too slow" in out and took < common.SLOW_AFTER_S + 20  # left about 10 s in
    assert fast.requests[0][1].startswith("bytes=")  # it resumes what the slow one gave
    print(f"slow copy left after {took:.1f} s")


@pytest.mark.parametrize("bad", ["wrong", "503"])
def test_a_wrong_file_or_an_error_is_that_copys_failure(bad, serve, tmp_path, capsys):
    _, bad_url = serve(bad)
    _, fast_url = serve("fast")
    common.CIFAR10_SOURCES[:] = [bad_url, fast_url]
    kind, out = get(tmp_path, capsys)
    assert kind == "cifar10"
    assert ("not the CIFAR-10 archive" if bad == "wrong" else "503") in out


@pytest.mark.parametrize("second", ["range", "fast"])
def test_a_cut_download_leaves_no_archive_and_resumes(second, serve, tmp_path, capsys):
    _, cut_url = serve("cut")
    common.CIFAR10_SOURCES[:] = [cut_url]
    kind, _ = get(tmp_path, capsys)
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    assert isinstance(kind, common.DataMissing) and "MB short" in str(kind)
    assert os.listdir(tmp_path / "data") == ["cifar-10-python.tar.gz.part"]
    half = os.path.getsize(str(archive) + ".part")
    assert 0 < half < common.CIFAR10_SIZE
    server, url = serve(second)  # honours Range (206), or sends the whole file again (200)
    common.CIFAR10_SOURCES[:] = [url]
    assert get(tmp_path, capsys)[0] == "cifar10"
    assert server.requests == [(server.requests[0][0], f"bytes={half}-")]
    assert archive.exists() and not os.path.exists(str(archive) + ".part")


def test_a_courses_copy_is_tried_first(serve, tmp_path, capsys, monkeypatch):
    course, course_url = serve("fast")
    public, public_url = serve("fast")
    common.CIFAR10_SOURCES.append(public_url)
    monkeypatch.setenv("CIFAR10_URL", course_url)
    assert get(tmp_path, capsys)[0] == "cifar10"
    assert len(course.requests) == 1 and public.requests == []


def test_no_copy_is_one_line_and_exit_2_naming_the_ways_out(serve, tmp_path, capsys):
    _, url = serve("503")
    common.CIFAR10_SOURCES.append(url)
    proc = run_main(load_script("03_cnn_train.py"),
                    ["--data", "cifar10", "--data-dir", str(tmp_path / "data"), "--data-url",
                     "http://127.0.0.1:9/closed", "--out-dir", str(tmp_path / "out")], capsys)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    line = proc.stderr
    assert line.startswith("error: CIFAR-10 is not in") and "Traceback" not in line
    assert "127.0.0.1: Connection refused" in line or "127.0.0.1: [Errno 111]" in line
    for way in ("put cifar-10-python.tar.gz there", "--data-url URL", "--data synthetic"):
        assert way in line
    assert not (tmp_path / "data").exists()  # no data folder, no part
    assert os.listdir(tmp_path / "out") == []  # no run folder
    assert "CIFAR10_URL" not in os.environ  # --data-url is put back after the run


def test_ctrl_c_during_the_download_keeps_the_part(serve, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(signal, "getsignal", signal.getsignal)  # (restored by launch anyway)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    _, url = serve("slow")
    common.CIFAR10_SOURCES.append(url)
    timer = threading.Timer(1.5, _thread.interrupt_main)  # Ctrl-C 1.5 s in
    timer.start()
    proc = run_main(load_script("01_convolution.py"),
                    ["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out")],
                    capsys)
    timer.cancel()
    part = tmp_path / "data" / "cifar-10-python.tar.gz.part"
    assert proc.returncode == 130 and "stopped" in proc.stderr
    assert part.exists() and part.stat().st_size > 0


@pytest.mark.parametrize("script", ["01_convolution.py", "02_padding_pooling.py",
                                    "03_cnn_train.py", "04_case_studies.py"])
def test_help_explains_data_url(script, capsys):
    proc = run_main(load_script(script), ["--help"], capsys)
    assert proc.returncode == 0 and "--data-url" in proc.stdout
    assert "course's copy" in " ".join(proc.stdout.split())

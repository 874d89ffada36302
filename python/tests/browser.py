"""A real browser for the dashboard's tests: headless Chromium driven over WebDriver by
Debian's ``chromedriver`` (which ``./test.sh`` installs), with plain JSON over HTTP on loopback.
Closed, and ``chromedriver`` stopped, by ``close`` — the tests call it in ``finally``."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from conftest import free_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def _request(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read() or b"{}")


class Browser:
    def __init__(self, width=1280, height=1000):
        for program in (CHROMIUM, CHROMEDRIVER):
            assert os.path.exists(program), (
                f"{program} is missing: the dashboard's browser tests need Chromium and "
                "ChromeDriver (apt-get install chromium chromium-driver, as ./test.sh does)"
            )
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.profile = tempfile.mkdtemp(prefix="blitzen-chromium-")
        self.session = None
        self.driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _request("GET", f"{self.base}/status")
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert time.monotonic() < deadline, "chromedriver did not come up"
                    time.sleep(0.05)
            args = [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--user-data-dir={self.profile}",
            ]
            capabilities = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}}
            self.session = _request("POST", f"{self.base}/session", capabilities)["value"]["sessionId"]
        except BaseException:
            self.close()
            raise

    def _call(self, method, path, body=None):
        return _request(method, f"{self.base}/session/{self.session}{path}", body)["value"]

    def open(self, url):
        self._call("POST", "/url", {"url": url})

    def eval(self, script):
        return self._call("POST", "/execute/sync", {"script": script, "args": []})

    def text(self, css):
        """The visible text of the first element matching `css`, read in one step: the page
        re-renders once a second, so an element found by one request may be gone by the next."""
        found = self.eval(f"const e = document.querySelector({json.dumps(css)}); return e && e.innerText;")
        if found is None:
            raise LookupError(f"no `{css}` in the page")
        return found

    def wait_for(self, script, within=60):
        """Waits until `script` returns true (the page updates once a second)."""
        deadline = time.monotonic() + within
        while self.eval(script) is not True:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def close(self):
        if self.session is not None:
            try:
                _request("DELETE", f"{self.base}/session/{self.session}")
            except Exception:
                pass
        if self.driver.poll() is None:
            os.killpg(self.driver.pid, signal.SIGKILL)
        self.driver.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

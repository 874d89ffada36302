//! A real browser for the dashboard's tests: headless Chromium driven over WebDriver by
//! Debian's `chromedriver` (packages `chromium` and `chromium-driver`, which `.ci/run`
//! installs).
//!
//! The WebDriver calls are plain JSON over HTTP on loopback. The browser's session is closed
//! and `chromedriver` stopped when the [`Browser`] is dropped, even when a test fails.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Process, TempFile, free_port, start_program};

/// Where Debian puts them; `CHROMIUM` and `CHROMEDRIVER` override.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn program(env: &str, default: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if path.exists() {
        Ok(path)
    } else {
        Err(io::Error::other(format!(
            "{} is missing: the dashboard's browser tests need Chromium and ChromeDriver \
             (apt-get install chromium chromium-driver, as .ci/run does; or set {env})",
            path.display()
        )))
    }
}

/// A headless Chromium with one WebDriver session.
#[derive(Debug)]
pub struct Browser {
    base: String,
    session: String,
    _profile: TempDir,
    _driver: Process,
}

/// A directory removed when dropped (the browser's profile).
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("WebDriver {what}: {e}"))
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a fresh profile, `width`×`height`.
    pub fn start(width: u32, height: u32) -> io::Result<Self> {
        let chromium = program("CHROMIUM", CHROMIUM)?;
        let chromedriver = program("CHROMEDRIVER", CHROMEDRIVER)?;
        let port = free_port()?;
        let mut command = Command::new(chromedriver);
        command.arg(format!("--port={port}"));
        let driver = start_program(command, "chromedriver")?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(format!("{base}/status")).call().is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "chromedriver did not come up:\n{}",
                    driver.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let marker = TempFile::new("chromium-profile", b"")?;
        let profile = TempDir(marker.path.with_extension("d"));
        std::fs::create_dir_all(&profile.0)?;
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.0.display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        }}});
        let mut reply = ureq::post(format!("{base}/session"))
            .send_json(&capabilities)
            .map_err(|e| failed("new session", format!("{e}\n{}", driver.log_text())))?;
        let reply: Value = reply.body_mut().read_json().map_err(|e| failed("new session", e))?;
        let session = reply["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| failed("new session", reply.to_string()))?
            .to_string();
        Ok(Self { base, session, _profile: profile, _driver: driver })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> io::Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let reply = match (method, body) {
            ("GET", _) => ureq::get(&url).call(),
            ("DELETE", _) => ureq::delete(&url).call(),
            (_, body) => ureq::post(&url).send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut reply = reply.map_err(|e| failed(path, e))?;
        let value: Value = reply.body_mut().read_json().map_err(|e| failed(path, e))?;
        Ok(value["value"].clone())
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) -> io::Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url }))).map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> io::Result<Value> {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// The first element matching `css`.
    fn element(&self, css: &str) -> io::Result<String> {
        let found =
            self.call("POST", "/element", Some(json!({ "using": "css selector", "value": css })))?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| failed("find element", format!("no `{css}`: {found}")))
    }

    /// The visible text of the first element matching `css`, read in one step: the page
    /// re-renders once a second, so an element found by one request may be gone by the next.
    pub fn text(&self, css: &str) -> io::Result<String> {
        let css_json = Value::String(css.to_string());
        let found = self.eval(&format!(
            "const e = document.querySelector({css_json}); return e && e.innerText;"
        ))?;
        found
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| failed("read text", format!("no `{css}` in the page: {found}")))
    }

    /// Clicks the first element matching `css`, found and clicked in one step (see
    /// [`text`](Self::text)).
    pub fn click(&self, css: &str) -> io::Result<()> {
        let css_json = Value::String(css.to_string());
        let script = format!(
            "const e = document.querySelector({css_json}); if (e) {{ e.click(); }} return e !== null;"
        );
        match self.eval(&script)? {
            Value::Bool(true) => Ok(()),
            other => Err(failed("click", format!("no `{css}` in the page: {other}"))),
        }
    }

    /// Types `text` into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) -> io::Result<()> {
        let id = self.element(css)?;
        self.call("POST", &format!("/element/{id}/value"), Some(json!({ "text": text }))).map(drop)
    }

    /// Waits until `script` returns `true`, for at most `limit` (the page updates once a
    /// second from the server's event stream).
    pub fn wait_for(&self, script: &str, limit: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(script)? == Value::Bool(true) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> io::Result<()> {
        use base64::Engine as _;
        let data = self.call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .map_err(|e| failed("screenshot", e))?;
        std::fs::write(path, png)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends Chromium; dropping the process stops chromedriver.
        let _ = self.call("DELETE", "", None);
    }
}

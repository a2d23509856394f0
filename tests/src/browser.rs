//! A real browser for the console tests: Debian's headless Chromium driven through
//! chromedriver's WebDriver API (W3C), over plain HTTP on 127.0.0.1.

use crate::{free_port, require};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free port and one headless Chromium session; both stop on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
}

/// An element of the page.
#[derive(Clone)]
pub struct El(String);

impl Browser {
    pub fn start() -> Self {
        let driver_bin = require("chromedriver");
        let chromium = require("chromium");
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        for _ in 0..200 {
            if http
                .get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1100", "--no-first-run", "--no-default-browser-check"]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Self {
            driver,
            base,
            session,
            http,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut r = self.http.request(method, &url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().unwrap().json().unwrap();
        v["value"].clone()
    }

    fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let v = self.call(method, path, body);
        if let Some(e) = v.get("error") {
            panic!("WebDriver {path}: {e}: {}", v["message"]);
        }
        v
    }

    pub fn goto(&self, url: &str) {
        self.ok(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.ok(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn source(&self) -> String {
        self.ok(reqwest::Method::GET, "/source", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn find_all(&self, css: &str) -> Vec<El> {
        self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            e.get(ELEMENT)
                .or_else(|| e.get("ELEMENT"))
                .and_then(Value::as_str)
                .map(|id| El(id.to_string()))
        })
        .collect()
    }

    /// The first element matching `css`, waiting for a page still loading.
    pub fn find(&self, css: &str) -> El {
        for _ in 0..100 {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no element {css:?} on {}:\n{}", self.url(), self.source())
    }

    /// The element's text ("" if the page was reloaded under it).
    pub fn text(&self, e: &El) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", e.0),
            None,
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// Clears a field and types `text` into it.
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{}/clear", e.0),
            Some(json!({})),
        );
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        );
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            Some(json!({})),
        );
    }

    /// Clicks and waits until the browser is on another page (a form that redirects).
    pub fn click_to_leave(&self, css: &str) {
        let before = self.url();
        self.click(css);
        for _ in 0..200 {
            if self.url() != before {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("still on {before} after clicking {css:?}");
    }

    /// The text of an open alert, if a page opened one.
    pub fn alert(&self) -> Option<String> {
        let v = self.call(reqwest::Method::GET, "/alert/text", None);
        if v.get("error").is_some() {
            None
        } else {
            Some(v.as_str().unwrap_or("").to_string())
        }
    }

    /// Every cookie the browser holds for the page, HttpOnly ones included.
    pub fn cookies(&self) -> Vec<Value> {
        self.ok(reqwest::Method::GET, "/cookie", None)
            .as_array()
            .unwrap()
            .clone()
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let v = self.ok(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

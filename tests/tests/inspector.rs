//! The web inspector (`agentfleet ui`) driven in a real headless Chromium over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/install-deploy-tools.sh` installs
//! them). Screenshots of each page go to `target/inspector-screenshots/` for the reviewer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentfleet_e2e::{Fleet, bin, free_port, wait_until};
use agentfleet_job::TaskStatus;
use base64::Engine;

/// One HTTP/1.1 exchange with 127.0.0.1:`port` (Connection: close): (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    // Read the head, then exactly Content-Length bytes (chromedriver keeps the connection
    // open whatever the request says); without a length, up to the close.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head_text = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length = head_text.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(len) => {
            while raw.len() < head_end + len {
                let n = stream.read(&mut buf).ok()?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            stream.read_to_end(&mut raw).ok()?;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A process of the test's own, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WebDriver session on a chromedriver of the test's own.
struct Browser {
    port: u16,
    session: String,
    shots: PathBuf,
    _driver: Proc,
}

impl Browser {
    fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (.ci/install-deploy-tools.sh)");
        let driver = Proc(driver);
        assert!(wait_until(Duration::from_secs(20), || http(
            port,
            "GET",
            "/status",
            None,
            &[]
        )
        .is_some_and(|(s, _)| s == 200)));
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let (status, body) =
            http(port, "POST", "/session", Some(&caps.to_string()), &[]).expect("new session");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        let shots =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/inspector-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Self {
            port,
            session,
            shots,
            _driver: driver,
        }
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then(|| body.to_string());
        let (status, text) =
            http(self.port, method, &path, body.as_deref(), &[]).expect("webdriver answers");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert!(status == 200, "{method} {path}: {status} {text}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", serde_json::json!({ "url": url }));
    }

    /// The first element matching `css`, once there is one.
    fn find(&self, css: &str) -> String {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(20), || {
            let path = format!("/session/{}/element", self.session);
            let body = serde_json::json!({"using": "css selector", "value": css}).to_string();
            if let Some((200, text)) = http(self.port, "POST", &path, Some(&body), &[]) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                found = v["value"]
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|id| id.as_str())
                    .map(str::to_owned);
            }
            found.is_some()
        });
        assert!(ok, "no element {css} on the page:\n{}", self.page_text());
        found.expect("an element")
    }

    fn text(&self, element: &str) -> String {
        self.call(
            "GET",
            &format!("/element/{element}/text"),
            serde_json::json!({}),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    fn page_text(&self) -> String {
        let path = format!("/session/{}/element", self.session);
        let body = serde_json::json!({"using": "css selector", "value": "body"}).to_string();
        http(self.port, "POST", &path, Some(&body), &[])
            .and_then(|(_, t)| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v["value"]
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(|id| id.as_str())
                    .map(str::to_owned)
            })
            .map(|id| self.text(&id))
            .unwrap_or_default()
    }

    fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            serde_json::json!({}),
        );
    }

    fn type_into(&self, element: &str, text: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            serde_json::json!({ "text": text }),
        );
    }

    fn screenshot(&self, name: &str) {
        let shot = self.call("GET", "/screenshot", serde_json::json!({}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().expect("base64 PNG"))
            .expect("valid base64");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            &[],
        );
    }
}

fn start_ui(fleet: &Fleet, args: &[&str]) -> Proc {
    Proc(
        Command::new(bin("agentfleet"))
            .arg("ui")
            .args(args)
            .envs(fleet.redis.to_env())
            .env("AGENTFLEET_NAMESPACE", &fleet.namespace)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agentfleet ui"),
    )
}

#[test]
fn the_inspector_finds_a_task_by_metadata_shows_its_answer_and_replays_a_dead_letter() {
    let fleet = Fleet::new("inspector");
    let _s = fleet.worker("synthesis").spawn();
    // A task that dies: its reasoning worker fails every call for good.
    let mut failing = fleet
        .worker("reasoning")
        .arg("--mock-fail-rate", 1)
        .arg("--mock-fail-kind", "permanent")
        .spawn();
    let doomed = fleet.cli_ok(&["enqueue", "--meta", "case=doomed", "replay me"]);
    let doomed = doomed.trim().to_owned();
    assert!(wait_until(Duration::from_secs(20), || fleet
        .record(&doomed)
        .status
        == TaskStatus::Dead));
    failing.kill9();
    let _r = fleet.worker("reasoning").spawn();
    let found = fleet.cli_ok(&["enqueue", "--meta", "customer=zeta-4711", "find me"]);
    let found = found.trim().to_owned();
    assert!(wait_until(Duration::from_secs(20), || fleet
        .record(&found)
        .status
        == TaskStatus::Done));

    let port = free_port();
    let _ui = start_ui(&fleet, &["--addr", &format!("127.0.0.1:{port}")]);
    assert!(wait_until(Duration::from_secs(10), || http(
        port,
        "GET",
        "/api/queues",
        None,
        &[]
    )
    .is_some_and(|(s, _)| s == 200)));
    let base = format!("http://127.0.0.1:{port}");
    let browser = Browser::start();

    // The queues page: one row per role, and the dead letter listed.
    browser.goto(&format!("{base}/"));
    let queues = browser.find("#queues");
    assert!(wait_until(Duration::from_secs(10), || {
        let t = browser.text(&queues);
        t.contains("reasoning") && t.contains("synthesis")
    }));
    browser.find("a.dead-link");
    browser.screenshot("01-queues");

    // Search by a metadata value, open the task, see its answer.
    let search = browser.find("#search");
    browser.type_into(&search, "zeta-4711");
    browser.click(&browser.find("#search-form button"));
    let link = browser.find("#results a.task-link");
    assert_eq!(browser.text(&link), found);
    browser.screenshot("02-search");
    browser.click(&link);
    let answer = browser.find("#answer");
    let expected = fleet.record(&found).answer.expect("an answer");
    assert_eq!(browser.text(&answer).trim(), expected.trim());
    browser.screenshot("03-task");

    // Open the dead letter and replay it: the task then finishes.
    browser.goto(&format!("{base}/"));
    browser.click(&browser.find("a.dead-link"));
    browser.click(&browser.find("#replay"));
    browser.find("#replayed-task");
    browser.screenshot("04-dead-letter-replayed");
    assert!(
        wait_until(Duration::from_secs(20), || fleet.record(&doomed).status
            == TaskStatus::Done),
        "{:?}",
        fleet.record(&doomed)
    );
    browser.goto(&format!("{base}/tasks/{doomed}"));
    browser.find("#answer");
    let events = browser.text(&browser.find("#events"));
    for kind in ["dead", "replayed", "done"] {
        assert!(
            events.contains(kind),
            "{kind} not among the task's events: {events}"
        );
    }
    browser.screenshot("05-replayed-task-done");

    // A cross-site POST is refused even on loopback.
    let (status, _) = http(
        port,
        "POST",
        &format!("/api/dead/reasoning/{doomed}/purge"),
        None,
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    )
    .expect("ui answers");
    assert_eq!(status, 403);
}

#[test]
fn a_non_loopback_inspector_needs_its_token() {
    let fleet = Fleet::new("inspector-token");
    // No token on a non-loopback address: a usage error at start-up.
    let out = Command::new(bin("agentfleet"))
        .args(["ui", "--addr", "0.0.0.0:0"])
        .envs(fleet.redis.to_env())
        .env("AGENTFLEET_NAMESPACE", &fleet.namespace)
        .output()
        .expect("run agentfleet ui");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    let port = free_port();
    let token = "a-long-enough-test-token";
    let dir = agentfleet_e2e::tempdir();
    let file = dir.join("token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let _ui = start_ui(
        &fleet,
        &[
            "--addr",
            &format!("0.0.0.0:{port}"),
            "--token-file",
            &file.display().to_string(),
        ],
    );
    let auth = format!("Bearer {token}");
    assert!(wait_until(Duration::from_secs(10), || http(
        port,
        "GET",
        "/api/queues",
        None,
        &[("Authorization", &auth)]
    )
    .is_some_and(|(s, _)| s == 200)));
    for path in ["/", "/api/queues", "/api/tasks", "/api/events"] {
        let (status, _) = http(port, "GET", path, None, &[]).expect("ui answers");
        assert_eq!(status, 401, "{path} without the token");
    }
    let (status, _) = http(
        port,
        "GET",
        "/api/queues",
        None,
        &[("Authorization", "Bearer wrong-token-of-some-length")],
    )
    .expect("ui answers");
    assert_eq!(status, 401);
    let (status, _) =
        http(port, "POST", "/api/dead/reasoning/x/purge", None, &[]).expect("ui answers");
    assert_eq!(status, 401, "a change without the token");
    // The token once in the URL sets a cookie the page's requests then carry.
    let (status, _) = http(port, "GET", &format!("/?token={token}"), None, &[]).expect("ui");
    assert_eq!(status, 200);
}

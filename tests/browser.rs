//! The try-it page and the live view in real headless Chromium (Debian's `chromium`, driven
//! over the DevTools protocol), served by a real daemon on the real broker with the shipped
//! model: typing "I like you. I love you" and clicking Classify shows the model's top label
//! first, and a moderator's correction sent from the page lands on the feedback topic; `/live`
//! shows rows while a short stream flows. Screenshots of both pages go to
//! `$EMOSTREAM_SCREENSHOTS` when set (the ones in docs/ were taken so).

mod common;

use base64::Engine;
use common::daemon::{daemon_env, DaemonBuilder};
use common::http::{free_port, http_get, http_post, wait_http};
use common::kafka::{producer, read_until, send_all, Topics};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// A child process killed when dropped, so a test that fails half-way (even before the
/// browser is fully set up) leaves no Chromium behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium with its DevTools endpoint; killed when dropped.
struct Browser {
    // Dropped first (fields drop in order): the socket, then the process, then its profile.
    ws: WebSocket<TcpStream>,
    _child: KillOnDrop,
    _profile: tempfile::TempDir,
    next_id: u64,
}

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("EMOSTREAM_CHROMIUM") {
        return p.into();
    }
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(p) = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(c))
            .find(|p| p.is_file())
        {
            return p;
        }
    }
    panic!("no chromium: install Debian's chromium (scripts/test.sh and .ci/run do) or set EMOSTREAM_CHROMIUM");
}

/// The DevTools HTTP endpoint's target list (it keeps connections open, so the body is read
/// by its Content-Length).
fn devtools_targets(port: u16) -> Value {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /json/list HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).expect("DevTools target list")
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = KillOnDrop(
            Command::new(chromium())
                .args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--window-size=1200,900",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting chromium"),
        );
        // Chromium writes the port it chose into the profile.
        let file = profile.path().join("DevToolsActivePort");
        let end = Instant::now() + Duration::from_secs(60);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(
                Instant::now() < end,
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let targets = devtools_targets(port);
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools WebSocket");
        let mut b = Browser {
            ws,
            _child: child,
            _profile: profile,
            next_id: 0,
        };
        b.call("Page.enable", json!({}));
        b
    }

    /// One DevTools command and its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        loop {
            let m = self.ws.read().expect("DevTools message");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; its value.
    fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for {expr}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for(
            "document.readyState === 'complete' && location.href",
            Duration::from_secs(30),
        );
    }

    /// A real click: mouse pressed and released at the centre of the element.
    fn click(&mut self, selector: &str) {
        let r = self.eval(&format!(
            "(() => {{ const b = document.querySelector('{selector}').getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; }})()"
        ));
        let (x, y) = (r[0].as_f64().unwrap(), r[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Saves a PNG of the page (to `$EMOSTREAM_SCREENSHOTS/name` when set); its bytes.
    fn screenshot(&mut self, name: &str) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Ok(dir) = std::env::var("EMOSTREAM_SCREENSHOTS") {
            std::fs::write(Path::new(&dir).join(name), &png).unwrap();
        }
        png
    }
}

#[test]
fn the_try_it_page_shows_the_top_label_first_and_the_live_view_shows_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::shipped_model_dir();
    let topics = Topics::new(1);
    let feedback_topic = common::kafka::unique("feedback");
    common::kafka::create_topic(&feedback_topic, 1, &[]);
    let port = free_port();
    let mut env = daemon_env(&topics, &model);
    env.retain(|(k, _)| k != "EMOSTREAM__ADMIN__BIND");
    env.extend([
        ("EMOSTREAM__ADMIN__BIND".into(), format!("127.0.0.1:{port}")),
        (
            "EMOSTREAM__ADMIN__ALLOW_UNAUTHENTICATED_LOOPBACK".into(),
            "true".into(),
        ),
        ("EMOSTREAM__UI__SHOW_TEXT".into(), "true".into()),
        (
            "EMOSTREAM__API__FEEDBACK_TOPIC".into(),
            feedback_topic.clone(),
        ),
    ]);
    let _daemon = DaemonBuilder::new(&env)
        .log(&tmp.path().join("daemon.log"))
        .spawn();
    wait_http(port, "/readyz", Duration::from_secs(60), |c, _| c == 200);

    let text = "I like you. I love you";
    let (_, answer) = http_post(
        port,
        "/v1/classify",
        &json!({ "text": text }).to_string(),
        None,
    )
    .unwrap();
    let ev: Value = serde_json::from_str::<Value>(&answer).unwrap()["events"][0].clone();
    let top = ev["scores"]
        .as_object()
        .unwrap()
        .iter()
        .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
        .map(|(k, _)| k.clone())
        .unwrap();

    let mut b = Browser::launch();
    b.open(&format!("http://127.0.0.1:{port}/"));
    b.wait_for(
        "document.getElementById('model').textContent.includes('goemotions')",
        Duration::from_secs(30),
    );
    b.eval("document.getElementById('text').focus()");
    b.call("Input.insertText", json!({ "text": text }));
    assert_eq!(b.eval("document.getElementById('text').value"), text);
    b.click("#classify");
    let shown = b.wait_for(
        "document.querySelector('#results .row') && document.querySelector('#results .row').dataset.label",
        Duration::from_secs(30),
    );
    assert_eq!(shown, top, "the first label shown is the model's top label");
    assert_eq!(
        b.eval("document.querySelectorAll('#results .row').length"),
        28
    );
    let fired =
        b.eval("[...document.querySelectorAll('#results .row.on')].map(r => r.dataset.label)");
    let want: Vec<Value> = ev["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].clone())
        .collect();
    assert_eq!(
        fired,
        Value::Array(want.clone()),
        "highlighted = the labels that fire"
    );
    assert!(b
        .eval("document.getElementById('timing').textContent")
        .as_str()
        .unwrap()
        .contains("computed in"));
    b.screenshot("try-it.png");

    // A moderator corrects the labels on the page: anger ticked besides what fired.
    b.wait_for(
        "document.getElementById('correct').style.display === 'block'",
        Duration::from_secs(10),
    );
    assert_eq!(
        b.eval("[...document.querySelectorAll('#correct-labels input:checked')].map(i => i.value)"),
        Value::Array(want.clone()),
        "the boxes start at the labels that fired"
    );
    b.eval("document.querySelector('#correct-labels input[value=anger]').scrollIntoView()");
    b.click("#correct-labels input[value=anger]");
    b.eval("document.getElementById('moderator').focus()");
    b.call("Input.insertText", json!({ "text": "mod-7" }));
    b.click("#send-correction");
    b.wait_for(
        "document.getElementById('correct-status').textContent.includes('correction written')",
        Duration::from_secs(20),
    );
    let records = read_until(&feedback_topic, Duration::from_secs(20), |r| !r.is_empty());
    assert_eq!(records.len(), 1);
    let sent: Value = serde_json::from_slice(&records[0].payload).unwrap();
    let mut labels: Vec<Value> = want.clone();
    labels.push(json!("anger"));
    let order: Vec<String> = serde_json::from_str::<Value>(&http_get(port, "/v1/model").unwrap().1)
        .unwrap()["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    labels.sort_by_key(|l| order.iter().position(|o| o == l.as_str().unwrap()));
    assert_eq!(sent["labels"], Value::Array(labels), "{sent}");
    assert_eq!(
        (sent["text"].as_str(), sent["moderator"].as_str()),
        (Some(text), Some("mod-7"))
    );

    // The live view while a short stream flows: rows from the input topic appear.
    let feeder = {
        let input = topics.input.clone();
        std::thread::spawn(move || {
            let p = producer();
            for (i, t) in common::texts("test", 120).iter().enumerate() {
                let payload = json!({"id": format!("c{i}"), "text": t})
                    .to_string()
                    .into_bytes();
                send_all(&p, &input, &[(None, payload, None)]);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    b.open(&format!("http://127.0.0.1:{port}/live"));
    let rows = b.wait_for(
        &format!("[...document.querySelectorAll('#rows tr')].filter(r => r.textContent.includes('{}/0/')).length >= 20 && document.querySelectorAll('#rows tr').length", topics.input),
        Duration::from_secs(60),
    );
    eprintln!("live view shows {rows} rows");
    feeder.join().unwrap();
    b.wait_for(
        "document.querySelectorAll('#counts .count').length",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(1500));
    b.screenshot("live.png");
}

//! `afs serve` against callers it must refuse or bound, with the real binary: web pages
//! writing across sites, DNS rebinding (other `Host` names), idle and slow connections
//! beyond the connection limit, bodies that never arrive, a missing database, and model
//! names that would blow up `/metrics`.
//!
//! Timeouts here are only upper bounds for waiting on a busy machine, never assertions of
//! speed.

mod serve_support;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use serve_support::{read_response, record, request, Env, Response, Server};

/// The longest we wait for anything the server should do by itself (close a connection,
/// answer a queued request). Generous: the machine may be busy.
const PATIENCE: Duration = Duration::from_secs(90);

/// A temp dir with an empty database: `afs serve` does not create one.
fn created() -> Env {
    let env = Env::new();
    env.afs(None, &["import", "/dev/null"]);
    env
}

/// One request with exactly these header lines (no Host or Content-Type added), on a new
/// connection, read to the end.
fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[String], body: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for line in headers {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    read_response(&mut stream)
}

/// Records in the database, as `afs stats` counts them.
fn total(env: &Env) -> u64 {
    let stats: Value = serde_json::from_str(&env.afs(None, &["stats", "--json"])).unwrap();
    stats["total"].as_u64().unwrap()
}

#[test]
fn writes_need_a_json_body_and_the_same_origin() {
    let env = created();
    let server = env.serve(&["--allowed-origin", "https://dash.example"]);
    let addr = server.addr;
    let host = format!("Host: {addr}");
    let body = record("q", "m", r#""quality_score":1.0,"feedback":1"#);
    let post = |path: &str, extra: &[&str], body: &str| {
        let mut headers = vec![host.clone()];
        headers.extend(extra.iter().map(|h| h.to_string()));
        raw(addr, "POST", path, &headers, body)
    };

    // What a page can send cross-site without asking: text/plain, a form, no type at all.
    for content_type in [
        Some("Content-Type: text/plain"),
        Some("Content-Type: text/plain;charset=UTF-8"),
        Some("Content-Type: application/x-www-form-urlencoded"),
        Some("Content-Type: multipart/form-data; boundary=x"),
        None,
    ] {
        let extra: Vec<&str> = content_type.into_iter().collect();
        let answer = post("/v1/usage", &extra, &body);
        assert_eq!(answer.status, 415, "{content_type:?}: {answer:?}");
        assert_eq!(answer.json()["kind"], "unsupported_media_type");
        let answer = post("/v1/feedback", &extra, r#"{"id":"x","value":1}"#);
        assert_eq!(answer.status, 415, "{content_type:?}: {answer:?}");
    }
    assert_eq!(total(&env), 0, "nothing refused was written");

    // JSON with parameters is JSON.
    let json = "Content-Type: application/json; charset=utf-8";
    assert_eq!(post("/v1/usage", &[json], &body).status, 201);

    // Another site's page, even with a JSON body (a CORS preflight is not needed to send
    // the request, only to read the answer), is refused.
    for origin in [
        "Origin: http://evil.example",
        "Origin: null",
        &format!("Origin: http://localhost:{}", addr.port() + 1),
    ] {
        let answer = post("/v1/usage", &[json, origin], &body);
        assert_eq!(answer.status, 403, "{origin}: {answer:?}");
        assert_eq!(answer.json()["kind"], "forbidden");
    }
    let answer = post("/v1/usage", &[json, "Sec-Fetch-Site: cross-site"], &body);
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(total(&env), 1, "nothing refused was written");

    // The server's own origin and a configured one may write.
    let own = format!("Origin: http://{addr}");
    assert_eq!(post("/v1/usage", &[json, &own], &body).status, 201);
    let allowed = [
        json,
        "Origin: https://dash.example",
        "Sec-Fetch-Site: cross-site",
    ];
    assert_eq!(post("/v1/usage", &allowed, &body).status, 201);
    assert_eq!(total(&env), 3);

    // Reads from anywhere are still reads; the route table's 404 and 405 still come.
    let read = raw(
        addr,
        "GET",
        "/v1/stats",
        &[host.clone(), "Origin: http://evil.example".into()],
        "",
    );
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(post("/v1/stats", &[], "").status, 405);
    assert_eq!(post("/v2/usage", &[json], &body).status, 404);

    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("afs_http_requests_refused_total{reason=\"content_type\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("afs_http_requests_refused_total{reason=\"origin\"} 4"),
        "{metrics}"
    );
}

#[test]
fn on_loopback_only_loopback_and_configured_host_names_are_served() {
    let env = created();
    std::fs::write(
        env.path("afs.toml"),
        "[serve]\nallowed_hosts = [\"afs.test\"]\n",
    )
    .unwrap();
    let server = env.serve(&[]);
    let addr = server.addr;
    let port = addr.port();
    let get = |host: &str, path: &str| raw(addr, "GET", path, &[format!("Host: {host}")], "");

    // A DNS-rebinding page reaches 127.0.0.1 under its own name: refused, reads included.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        for path in ["/v1/status", "/", "/metrics", "/healthz", "/nowhere"] {
            let answer = get(&host, path);
            assert_eq!(answer.status, 421, "{host} {path}: {answer:?}");
            assert_eq!(answer.json()["kind"], "misdirected_request");
        }
    }
    let write = raw(
        addr,
        "POST",
        "/v1/usage",
        &[
            format!("Host: evil.example:{port}"),
            "Content-Type: application/json".into(),
        ],
        &record("q", "m", ""),
    );
    assert_eq!(write.status, 421, "{write:?}");
    assert_eq!(total(&env), 0);

    // The dashboard from a browser on this machine, under any loopback name, and the
    // configured name.
    for host in [
        addr.to_string(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.0.2:{port}"),
        format!("afs.test:{port}"),
        "AFS.TEST".to_string(),
    ] {
        let page = get(&host, "/");
        assert_eq!(page.status, 200, "{host}: {page:?}");
        assert!(
            page.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{page:?}"
        );
        assert_eq!(get(&host, "/v1/status").status, 200, "{host}");
        assert_eq!(get(&host, "/assets/dashboard.js").status, 200, "{host}");
    }
}

#[test]
fn on_all_addresses_the_host_rule_is_off_unless_hosts_are_listed() {
    let env = created();
    let mut server = start(&env, &["--addr", "0.0.0.0:0"]);
    let addr = server.addr;
    let answer = raw(
        addr,
        "GET",
        "/v1/status",
        &["Host: afs.example:80".into()],
        "",
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let _ = server.child.kill();
    let _ = server.child.wait();

    let server = start(
        &env,
        &["--addr", "0.0.0.0:0", "--allowed-host", "afs.example"],
    );
    let addr = server.addr;
    let get = |host: &str| raw(addr, "GET", "/v1/status", &[format!("Host: {host}")], "");
    assert_eq!(get("afs.example:80").status, 200);
    assert_eq!(get("other.example:80").status, 421);
    assert_eq!(get(&format!("127.0.0.1:{}", addr.port())).status, 200);
}

/// `afs serve ARGS` (with its own `--addr`), waiting for its address; connects through
/// loopback whatever it is bound to.
fn start(env: &Env, args: &[&str]) -> Started {
    let mut cmd = env.command(None, &["serve"]);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.strip_prefix("listening on http://") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let Ok(url) = rx.recv_timeout(PATIENCE) else {
        let _ = child.kill();
        panic!("afs serve printed no address");
    };
    let bound: SocketAddr = url.parse().unwrap();
    Started {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], bound.port())),
    }
}

/// A server started by [`start`]; killed on drop.
struct Started {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sockets the process `pid` holds open (Linux), if `/proc` tells.
fn sockets(pid: u32) -> Option<usize> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count(),
    )
}

/// Waits until the server closes `stream` (end of file or reset), reading and discarding
/// whatever it sends first; panics if it is still open after [`PATIENCE`].
fn wait_closed(stream: &mut TcpStream, what: &str) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: still open after {PATIENCE:?} ({e})"),
        }
    }
}

#[test]
fn idle_connections_beyond_the_limit_neither_exhaust_the_server_nor_stop_it() {
    let env = created();
    let server = env.serve(&["--max-connections", "8", "--header-timeout", "1"]);
    let pid = server.child.id();
    let baseline = sockets(pid);

    // 50 connections that send nothing: the kernel completes them all, the server holds at
    // most 8 at a time.
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    if let Some(baseline) = baseline {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            let now = sockets(pid).unwrap_or(0);
            assert!(
                now <= baseline + 8,
                "the server holds {now} sockets, {baseline} before the idle connections"
            );
        }
    } else {
        eprintln!("notice: no /proc: the sockets of the server are not counted");
    }

    // A real request behind them is answered, once idle ones have been closed.
    let health = request(server.addr, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200, "{health:?}");

    // And every idle connection was closed by the server.
    for (i, stream) in idle.iter_mut().enumerate() {
        wait_closed(stream, &format!("idle connection {i}"));
    }
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn connections_that_send_nothing_dribble_headers_or_idle_are_closed() {
    let env = created();
    let server = env.serve(&["--header-timeout", "1"]);

    // Nothing at all.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    wait_closed(&mut silent, "a connection that sends nothing");

    // A head that never ends: one header line at a time.
    let mut dribble = TcpStream::connect(server.addr).unwrap();
    dribble
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", server.addr).as_bytes())
        .unwrap();
    dribble
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = loop {
        assert!(
            started.elapsed() < PATIENCE,
            "a dribbling client is still connected after {PATIENCE:?}"
        );
        if dribble.write_all(b"X-Slow: 1\r\n").is_err() {
            break true;
        }
        let mut buf = [0u8; 1024];
        match dribble.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => break true,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(closed);
    assert!(
        !String::from_utf8_lossy(&received).contains(" 200 "),
        "the dribbled request was not served: {:?}",
        String::from_utf8_lossy(&received)
    );

    // A kept-alive connection after its answer.
    let mut kept = TcpStream::connect(server.addr).unwrap();
    kept.set_read_timeout(Some(PATIENCE)).unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(kept.read(&mut byte).unwrap(), 1, "the answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    kept.read_exact(&mut body).unwrap();
    wait_closed(&mut kept, "an idle kept-alive connection");
}

#[test]
fn a_body_that_does_not_arrive_is_408_and_nothing_is_written() {
    let env = created();
    let server = env.serve(&["--body-timeout", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let body = record("q", "m", "");
    write!(
        stream,
        "POST /v1/usage HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{}",
        server.addr,
        body.len() + 100,
        body
    )
    .unwrap();
    let answer = read_response(&mut stream);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.json()["kind"], "request_timeout");
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(total(&env), 0);
}

#[test]
fn a_missing_database_is_refused_not_created() {
    let env = Env::new();
    let mut child = env
        .command(None, &["serve", "--addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("afs serve is still running on a missing database");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(!env.db.exists(), "the database was created");
    let path = env.db.display().to_string();
    assert!(
        stderr.contains(&format!("database {path} does not exist")),
        "{stderr}"
    );
    assert!(stderr.contains("import /dev/null"), "{stderr}");
}

#[test]
fn metrics_export_a_bounded_set_of_bounded_model_labels() {
    let env = Env::new();
    env.afs(
        None,
        &["ab", "set-champion", "quiet-champion", "--path", "/m/c"],
    );
    let server: Server = env.serve(&[]);
    // 30 short names, busier and busier, and two long ones sharing a 240-byte prefix.
    let long_a = format!("{}-a", "é".repeat(120));
    let long_b = format!("{}-b", "é".repeat(120));
    let mut records: Vec<String> = (0..30)
        .flat_map(|i| (0..=i).map(move |_| record("q", &format!("model-{i:02}"), "")))
        .collect();
    for name in [&long_a, &long_b] {
        for _ in 0..40 {
            records.push(record("q", name, ""));
        }
    }
    let answer = server.post("/v1/usage", &format!("[{}]", records.join(",")));
    assert_eq!(answer.status, 201, "{answer:?}");

    let text = server.get("/metrics").body;
    let mut models = HashSet::new();
    for line in text.lines() {
        assert!(
            line.len() <= 400,
            "a line of {} bytes: {line:.200}",
            line.len()
        );
        if let Some(rest) = line.split("model=\"").nth(1) {
            let mut value = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            models.insert(value);
        }
    }
    assert_eq!(models.len(), 20, "{models:?}");
    assert!(
        models.contains("quiet-champion"),
        "the champion: {models:?}"
    );
    let long: Vec<&String> = models.iter().filter(|m| m.starts_with("éé")).collect();
    assert_eq!(
        long.len(),
        2,
        "both long names, cut but distinct: {models:?}"
    );
    assert!(
        long.iter().all(|m| m.len() <= 128 && m.contains('…')),
        "{long:?}"
    );
    assert!(
        models.contains("model-29") && !models.contains("model-00"),
        "{models:?}"
    );
    assert!(
        text.contains("afs_model_labels_omitted 13\n"),
        "33 models, 20 exported: {text}"
    );
}

/// A client that asks and never reads the answers: once an answer cannot be written for
/// `--write-timeout`, its connection is closed and its slot freed. With one slot, a second
/// client is answered only because of that.
#[test]
fn a_client_that_never_reads_its_answers_loses_its_connection() {
    let env = created();
    let server = env.serve(&[
        "--max-connections",
        "1",
        "--header-timeout",
        "60",
        "--write-timeout",
        "1",
    ]);
    // Pipelined requests for the API description: megabytes of answers, never read.
    let mut greedy = TcpStream::connect(server.addr).expect("connect");
    let one = "GET /v1/openapi.yaml HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let requests = one.repeat(2_000);
    greedy.write_all(requests.as_bytes()).unwrap();
    // The only slot is the greedy client's until the server gives up writing to it.
    let health = request(server.addr, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200, "{health:?}");
    drop(greedy);
    assert_eq!(server.get("/healthz").status, 200);
}

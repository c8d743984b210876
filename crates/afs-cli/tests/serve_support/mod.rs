//! Helpers of the `afs serve` tests: the real binary started on an ephemeral port over a
//! temp database, a small blocking HTTP/1.1 client over `TcpStream`, and SIGTERM.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The `afs` binary under test.
pub(crate) fn afs_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("afs")
}

/// A temp dir with a database, for the server and for CLI runs on the same database.
pub(crate) struct Env {
    pub(crate) dir: TempDir,
    pub(crate) db: PathBuf,
}

impl Env {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("afs.db");
        Env { dir, db }
    }

    /// `afs --db DB ARGS` in the temp dir with a clean environment (and `AFS_NOW` when
    /// `now` is given).
    pub(crate) fn command(&self, now: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(afs_bin());
        cmd.env_remove("AFS_DB")
            .env_remove("AFS_CONFIG")
            .env_remove("AFS_TOKENS")
            .env_remove("AFS_ADDR")
            .env_remove("AFS_NOW")
            .env_remove("AFS_JSON_ENVELOPE")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .arg("--db")
            .arg(&self.db)
            .args(args);
        if let Some(now) = now {
            cmd.env("AFS_NOW", now);
        }
        cmd
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub(crate) fn afs(&self, now: Option<&str>, args: &[&str]) -> String {
        let output = self.command(now, args).output().unwrap();
        assert!(output.status.success(), "afs {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// Starts `afs serve --addr 127.0.0.1:0 ARGS` and waits for its address.
    pub(crate) fn serve(&self, args: &[&str]) -> Server {
        self.serve_with(None, &[], args)
    }

    /// [`Env::serve`] with a pinned clock and extra environment variables.
    pub(crate) fn serve_with(
        &self,
        now: Option<&str>,
        envs: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let mut cmd = self.command(now, &["serve", "--addr", "127.0.0.1:0"]);
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Server::spawn(cmd)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running `afs serve`; killed on drop if it is still running.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("start afs serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (addr_tx, addr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on http://") {
                    let _ = addr_tx.send(url.trim().to_string());
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                let lines: Vec<String> = err_rx.try_iter().collect();
                panic!(
                    "afs serve printed no address; stderr:\n{}",
                    lines.join("\n")
                );
            }
        };
        Server {
            child,
            addr,
            stderr: err_rx,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], None)
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> Response {
        request(self.addr, "POST", path, &[], Some(body.as_bytes()))
    }

    pub(crate) fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        request(self.addr, "POST", path, headers, Some(body.as_bytes()))
    }

    pub(crate) fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "GET", path, headers, None)
    }

    /// Sends SIGTERM to the server process (its own pid, positive: never a group).
    pub(crate) fn sigterm(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        assert!(pid > 0);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM)
            .expect("send SIGTERM");
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "afs serve did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server wrote on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:#?}"))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a new connection (`Connection: close`), read to the end.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to afs serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        stream.write_all(body).unwrap();
    }
    read_response(&mut stream)
}

/// Reads a response until the server closes the connection.
pub(crate) fn read_response(stream: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .expect("hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Whether `chromium` is on the PATH.
pub(crate) fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

/// The workspace root (two levels above this crate).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// A record as JSON text.
pub(crate) fn record(query: &str, model: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!("{{\"query\":\"{query}\",\"response\":\"an answer\",\"model\":\"{model}\"{extra}}}")
}

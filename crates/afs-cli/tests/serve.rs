//! `afs serve` end to end: the real binary on an ephemeral port over a temp SQLite file,
//! driven over HTTP. Every endpoint, auth (401), body limit (413), bad input (400 naming the
//! field), unknown ids (404), all-or-nothing batches, concurrent single-record posts,
//! graceful shutdown on SIGTERM with a request in flight, and the loop in the same process.
//! (The load generator that measures the service is the bench's `afs-bench serve-load`.)

mod serve_support;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use serve_support::{read_response, record, request, Env, Server};

/// Total records in the store, as the API reports it.
/// A temp dir with an empty database: `afs serve` does not create one.
fn created() -> Env {
    let env = Env::new();
    env.afs(None, &["import", "/dev/null"]);
    assert!(env.db.exists());
    env
}

fn total(server: &Server) -> u64 {
    server.get("/v1/stats").json()["total"].as_u64().unwrap()
}

#[test]
fn every_endpoint_answers() {
    let env = Env::new();
    env.afs(
        None,
        &[
            "ab",
            "set-champion",
            "nayru-v1",
            "--path",
            "/models/nayru-v1",
        ],
    );
    env.afs(
        None,
        &[
            "ab",
            "deploy",
            "nayru-v2",
            "--path",
            "/models/nayru-v2",
            "--weight",
            "0.5",
        ],
    );
    let server = env.serve(&[]);

    let health = server.get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    // One record, then batches in both shapes.
    let one = server.post(
        "/v1/usage",
        &record(
            "What is 65816?",
            "nayru-v1",
            r#""quality_score":0.85,"unit":"user-1","latency_ms":120"#,
        ),
    );
    assert_eq!(one.status, 201, "{one:?}");
    let id = one.json()["id"].as_str().unwrap().to_string();
    let batch = format!(
        "[{},{}]",
        record("q1", "nayru-v2", r#""quality_score":0.9,"feedback":1"#),
        record("q2", "nayru-v1", r#""feedback":-1,"feedback_text":"wrong""#)
    );
    let ids = server.post("/v1/usage", &batch);
    assert_eq!(ids.status, 201, "{ids:?}");
    assert_eq!(ids.json()["ids"].as_array().unwrap().len(), 2);
    let wrapped = format!("{{\"records\":[{}]}}", record("q3", "nayru-v2", ""));
    assert_eq!(
        server.post("/v1/usage", &wrapped).json()["ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Feedback replaces; the record is then counted as positive.
    let feedback = server.post("/v1/feedback", &json!({"id": id, "value": -1}).to_string());
    assert_eq!(feedback.status, 200, "{feedback:?}");
    let feedback = server.post(
        "/v1/feedback",
        &json!({"id": id, "value": 1, "text": "great"}).to_string(),
    );
    assert_eq!(
        feedback.json(),
        json!({"id": id, "value": 1, "text": "great"})
    );

    // Routing is sticky per unit and names the version.
    let first = server.get("/v1/route?unit=user-42").json();
    for _ in 0..5 {
        assert_eq!(
            server.get("/v1/route?unit=user-42").json()["model"],
            first["model"]
        );
    }
    assert!(["nayru-v1", "nayru-v2"].contains(&first["model"].as_str().unwrap()));
    assert_eq!(first["unit"], "user-42");
    assert_eq!(first["challenger_weight"], 0.5);
    assert!(first["model_path"]
        .as_str()
        .unwrap()
        .starts_with("/models/"));
    let models: HashSet<String> = (0..200)
        .map(|i| {
            server.get(&format!("/v1/route?unit=u{i}")).json()["model"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(models.len(), 2, "a 50% split sends units to both arms");
    assert_eq!(
        server.get("/v1/route").status,
        200,
        "a request without a unit is routed too"
    );

    // Statistics as the CLI prints them.
    let stats = server.get("/v1/stats").json();
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["positive_feedback"], 2);
    assert_eq!(stats["negative_feedback"], 1);
    let by_model = server.get("/v1/stats?by_model=true&since=1h").json();
    assert_eq!(by_model["nayru-v1"]["total"], 2);
    assert_eq!(by_model["nayru-v2"]["total"], 2);
    let cli: Value =
        serde_json::from_str(&env.afs(None, &["stats", "--json", "--by-model"])).unwrap();
    assert_eq!(
        cli,
        server.get("/v1/stats?by_model=1").json(),
        "the API prints what the CLI prints"
    );
    assert_eq!(server.get("/v1/stats?model=nayru-v2").json()["total"], 2);
    assert_eq!(
        server.get("/v1/stats?until=2000-01-01T00:00:00Z").json()["total"],
        0
    );

    let series = server.get("/v1/series?hours=2").json();
    assert_eq!(series["hours"], 2);
    let series_models = series["models"].as_array().unwrap();
    assert_eq!(series_models.len(), 2);
    let points = series_models[0]["points"].as_array().unwrap();
    assert_eq!(
        points
            .iter()
            .map(|p| p["total"].as_u64().unwrap())
            .sum::<u64>(),
        2
    );

    let status = server.get("/v1/status").json();
    assert_eq!(status["status"]["champion_model"], "nayru-v1");
    assert_eq!(status["status"]["challenger_model"], "nayru-v2");
    assert_eq!(status["usage"]["total"], 4);
    assert_eq!(status["server"]["with_loop"], false);

    let experiment = server.get("/v1/experiment").json();
    assert_eq!(experiment["experiment"]["challenger"], "nayru-v2");
    assert_eq!(
        experiment["experiment"]["periods"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let comparison = &experiment["comparison"];
    assert_eq!(comparison["decision"], "keep_testing");
    assert_eq!(comparison["metrics"][0]["metric"], "quality");
    assert!(
        comparison["reason"]
            .as_str()
            .unwrap()
            .contains("waiting for samples"),
        "{comparison}"
    );

    let history = server.get("/v1/history").json();
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["deploy", "set_champion"], "newest first");
    let deploys = server
        .get("/v1/history?kinds=deploy&statistics=true&limit=5")
        .json();
    assert_eq!(deploys["events"].as_array().unwrap().len(), 1);
    assert!(deploys["events"][0].get("statistics").is_some());

    let runs = server.get("/v1/runs?limit=5").json();
    assert_eq!(runs, json!({"runs": []}));

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    for needle in [
        "afs_usage_records_logged_total 4",
        "afs_usage_batches_logged_total 2",
        "afs_feedback_recorded_total{value=\"positive\"} 1",
        "afs_feedback_recorded_total{value=\"negative\"} 1",
        "afs_model_records_total{model=\"nayru-v1\"} 2",
        "afs_model_quality_score_sum{model=\"nayru-v1\"} 0.85",
        "afs_model_quality_score_count{model=\"nayru-v1\"} 1",
        "afs_model_feedback_total{model=\"nayru-v1\",value=\"positive\"} 1",
        "afs_model_feedback_total{model=\"nayru-v1\",value=\"negative\"} 1",
        "# TYPE afs_model_quality_score summary",
        "# TYPE afs_model_latency_seconds summary",
        "afs_retrain_running 0",
        "afs_traffic_share{model=\"nayru-v2\",arm=\"challenger\"} 0.5",
        "afs_retrain_runs_total{status=\"completed\"} 0",
        "afs_promotions_total 0",
        "afs_rollbacks_total 0",
        "afs_experiment_running 1",
        "afs_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/usage\",le=\"+Inf\"} 3",
        "afs_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/route\"} 207",
    ] {
        assert!(metrics.body.contains(needle), "/metrics lacks {needle:?}:\n{}", metrics.body);
    }
    assert!(metrics
        .body
        .contains("# TYPE afs_http_request_duration_seconds histogram"));

    // The dashboard and its assets, with a policy that forbids other origins.
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>afs"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(server
        .get("/assets/dashboard.js")
        .body
        .contains("afs-status"));
    assert_eq!(server.get("/assets/dashboard.css").status, 200);

    // Every operation the OpenAPI file lists is served (the unit test checks the converse).
    let spec = server.get("/v1/openapi.yaml");
    assert_eq!(spec.status, 200);
    let on_disk =
        std::fs::read_to_string(serve_support::workspace_root().join("docs/openapi.yaml")).unwrap();
    assert_eq!(spec.body, on_disk);
    let mut path = None;
    let mut n_operations = 0;
    for line in on_disk.lines().skip_while(|l| *l != "paths:").skip(1) {
        if !line.starts_with(' ') && !line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            path = Some(p.trim_end_matches(':').to_string());
        } else if let Some(m) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
            let method = m.trim_end_matches(':').to_uppercase();
            if method == "GET" || method == "POST" {
                let path = path.clone().unwrap();
                let body = (method == "POST").then_some(&b"{}"[..]);
                let response = request(server.addr, &method, &path, &[], body);
                assert!(
                    ![404, 405].contains(&response.status) || path == "/v1/feedback",
                    "{method} {path} from docs/openapi.yaml: {response:?}"
                );
                n_operations += 1;
            }
        }
    }
    assert_eq!(n_operations, 15, "operations read from docs/openapi.yaml");
}

#[test]
fn unknown_paths_and_methods_get_json_errors() {
    let env = created();
    let server = env.serve(&[]);
    let missing = server.get("/v2/usage");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["kind"], "not_found");
    let wrong_method = request(server.addr, "DELETE", "/v1/usage", &[], None);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json()["kind"], "method_not_allowed");
    let no_champion = server.get("/v1/route?unit=u");
    assert_eq!(no_champion.status, 409);
    assert!(no_champion.json()["error"]
        .as_str()
        .unwrap()
        .contains("no champion"));
    assert!(server
        .get("/metrics")
        .body
        .contains("route=\"unmatched\",status=\"4xx\"} 2"));
}

/// Sends `body` to `path` and checks the status and the `field` the error names.
fn check(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
    status: u16,
    field: Option<&str>,
) {
    let response = request(server.addr, method, path, &[], body.map(str::as_bytes));
    assert_eq!(
        response.status, status,
        "{method} {path} {body:?}: {response:?}"
    );
    if status >= 400 {
        let error = response.json();
        assert_eq!(
            error["field"].as_str(),
            field,
            "{method} {path} {body:?}: {error}"
        );
        assert!(error["error"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(field) = field {
            assert!(error["error"].as_str().unwrap().contains(field), "{error}");
        }
    }
}

#[test]
fn bad_input_is_400_naming_the_field_and_unknown_ids_are_404() {
    let env = created();
    let server = env.serve(&[]);
    let ok = record("q", "m", "");
    let post = |body: &str, status: u16, field: Option<&str>| {
        check(&server, "POST", "/v1/usage", Some(body), status, field)
    };
    post(&ok, 201, None);
    post("", 400, None);
    post("{\"query\": \"q\",", 400, None);
    post("\"text\"", 400, None);
    post(r#"{"query":"q","response":"r"}"#, 400, Some("model"));
    post(
        r#"{"query":"","response":"r","model":"m"}"#,
        400,
        Some("query"),
    );
    post(
        &record("q", "m", r#""quality_score":1.5"#),
        400,
        Some("quality_score"),
    );
    post(
        &record("q", "m", r#""quality_score":"high""#),
        400,
        Some("quality_score"),
    );
    post(
        &record("q", "m", r#""latency_ms":-3"#),
        400,
        Some("latency_ms"),
    );
    post(
        &record("q", "m", r#""token_count":-1"#),
        400,
        Some("token_count"),
    );
    post(&record("q", "m", r#""feedback":5"#), 400, Some("feedback"));
    post(
        &record("q", "m", r#""feedback_text":"x""#),
        400,
        Some("feedback_text"),
    );
    post(&record("q", "m", r#""unit":"""#), 400, Some("unit"));
    post(
        &record("q", "m", r#""timestamp":"last tuesday""#),
        400,
        Some("timestamp"),
    );
    post(&record("q", "m", r#""colour":"red""#), 400, Some("colour"));
    post(
        &format!("[{ok},{}]", record("q", "m", r#""quality_score":-0.1"#)),
        400,
        Some("records[1].quality_score"),
    );
    post(
        &format!("{{\"records\":[{ok},{ok},{{\"query\":\"q\",\"model\":\"m\"}}]}}"),
        400,
        Some("records[2].response"),
    );
    post("{\"records\":{}}", 400, Some("records"));

    let feedback = |body: &str, status: u16, field: Option<&str>| {
        check(&server, "POST", "/v1/feedback", Some(body), status, field)
    };
    feedback(
        r#"{"id":"01NOSUCHRECORD0000000000000","value":1}"#,
        404,
        None,
    );
    feedback(r#"{"value":1}"#, 400, Some("id"));
    feedback(r#"{"id":"x","value":3}"#, 400, Some("value"));
    feedback(r#"{"id":"x","value":"up"}"#, 400, Some("value"));
    feedback(r#"{"id":"x","value":1,"text":5}"#, 400, Some("text"));
    feedback(r#"{"id":"x","value":1,"stars":5}"#, 400, Some("stars"));
    feedback("[]", 400, None);

    let get = |path: &str, status: u16, field: Option<&str>| {
        check(&server, "GET", path, None, status, field)
    };
    get("/v1/stats?since=soon", 400, Some("since"));
    get("/v1/stats?until=2025-13-45", 400, Some("until"));
    get("/v1/stats?by_model=maybe", 400, Some("by_model"));
    get("/v1/stats?modle=m", 400, Some("modle"));
    get("/v1/stats?model=", 400, Some("model"));
    get("/v1/series?hours=0", 400, Some("hours"));
    get("/v1/series?hours=100000", 400, Some("hours"));
    get("/v1/runs?status=lost", 400, Some("status"));
    get("/v1/runs?limit=-1", 400, Some("limit"));
    get("/v1/history?kinds=deploy,explode", 400, Some("kinds"));
    get("/v1/history?experiment_id=x", 400, Some("experiment_id"));
    get("/v1/route?unit=", 400, Some("unit"));
    get("/v1/route?unit=a&unit=b", 400, Some("unit"));

    assert_eq!(total(&server), 1, "only the one good record was written");
    assert_eq!(server.get("/healthz").status, 200, "still serving");
}

#[test]
fn a_batch_with_one_bad_record_writes_nothing() {
    let env = created();
    let server = env.serve(&["--max-batch", "100"]);
    let good: Vec<String> = (0..50).map(|i| record(&format!("q{i}"), "m", "")).collect();
    let mut bad = good.clone();
    bad[37] = record("q37", "m", r#""quality_score":7"#);
    let response = server.post("/v1/usage", &format!("[{}]", bad.join(",")));
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["field"], "records[37].quality_score");
    assert_eq!(total(&server), 0, "nothing of the bad batch was written");

    let too_many: Vec<String> = (0..101)
        .map(|i| record(&format!("q{i}"), "m", ""))
        .collect();
    let response = server.post("/v1/usage", &format!("[{}]", too_many.join(",")));
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["field"], "records");
    assert_eq!(total(&server), 0);

    let response = server.post("/v1/usage", &format!("[{}]", good.join(",")));
    assert_eq!(response.status, 201);
    let ids: HashSet<String> = response.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 50);
    assert_eq!(total(&server), 50);
}

#[test]
fn an_oversized_body_is_413_and_the_server_goes_on() {
    let env = created();
    let server = env.serve(&["--max-body-bytes", "65536"]);
    let big = record(&"x".repeat(100_000), "m", "");
    let response = server.post("/v1/usage", &big);
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.json()["kind"], "payload_too_large");
    let response = server.post("/v1/usage", &record(&"x".repeat(60_000), "m", ""));
    assert_eq!(response.status, 201, "a body under the limit is fine");
    assert_eq!(total(&server), 1);
}

#[test]
fn tokens_protect_writes_and_the_dashboard() {
    let env = created();
    let server = env.serve(&["--token", "s3cret-token", "--token", "second-token"]);
    let body = record("q", "m", "");
    let denied = server.post("/v1/usage", &body);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["kind"], "unauthorized");
    assert_eq!(
        denied.header("www-authenticate"),
        Some("Bearer realm=\"afs\"")
    );
    assert_eq!(
        server
            .post_with("/v1/usage", &[("Authorization", "Bearer wrong")], &body)
            .status,
        401
    );
    assert_eq!(
        server
            .post_with(
                "/v1/usage",
                &[("Authorization", "Bearer s3cret-token")],
                &body
            )
            .status,
        201
    );
    assert_eq!(
        server
            .post_with(
                "/v1/usage",
                &[("Authorization", "Bearer second-token")],
                &body
            )
            .status,
        201
    );
    assert_eq!(
        server
            .post_with("/v1/usage", &[("Cookie", "afs_token=s3cret-token")], &body)
            .status,
        401,
        "a cookie does not authorize a write"
    );
    assert_eq!(
        server
            .post("/v1/feedback", r#"{"id":"x","value":1}"#)
            .status,
        401
    );

    // Reads stay open; the dashboard does not.
    assert_eq!(server.get("/v1/stats").status, 200);
    assert_eq!(server.get("/metrics").status, 200);
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/assets/dashboard.js").status, 200);
    let page = server.get("/");
    assert_eq!(page.status, 401);
    assert!(page.body.contains("/?token="));
    assert_eq!(server.get("/?token=nope").status, 401);
    let login = server.get("/?token=s3cret-token");
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("afs_token=s3cret-token")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_eq!(
        server
            .get_with("/", &[("Cookie", "afs_token=s3cret-token")])
            .status,
        200
    );
    assert_eq!(
        server
            .get_with("/", &[("Authorization", "Bearer second-token")])
            .status,
        200
    );
    assert_eq!(total(&server), 2);
    drop(server);

    // With --protect-reads (and tokens from AFS_TOKENS) reads need the header or the cookie.
    let server = env.serve_with(
        None,
        &[("AFS_TOKENS", "alpha-token,beta-token")],
        &["--protect-reads"],
    );
    assert_eq!(server.get("/v1/stats").status, 401);
    assert_eq!(server.get("/metrics").status, 401);
    assert_eq!(
        server
            .get_with("/v1/stats", &[("Authorization", "Bearer beta-token")])
            .status,
        200
    );
    assert_eq!(
        server
            .get_with("/v1/stats", &[("Cookie", "afs_token=alpha-token")])
            .status,
        200
    );
    assert_eq!(server.get("/healthz").status, 200);

    // A bad token configuration is refused at start.
    let output = env
        .command(
            None,
            &["serve", "--addr", "127.0.0.1:0", "--token", "has space"],
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let output = env
        .command(None, &["serve", "--addr", "127.0.0.1:0", "--protect-reads"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
}

#[test]
fn tokens_and_limits_come_from_the_config_file() {
    let env = created();
    std::fs::write(
        env.path("afs.toml"),
        "[serve]\ntokens = [\"file-token\"]\nmax_batch = 2\n",
    )
    .unwrap();
    let server = env.serve(&[]);
    let body = record("q", "m", "");
    let denied = server.post("/v1/usage", &body);
    assert_eq!(denied.status, 401, "{denied:?}");
    let bearer = [("Authorization", "Bearer file-token")];
    let allowed = server.post_with("/v1/usage", &bearer, &body);
    assert_eq!(allowed.status, 201, "{allowed:?}");
    let batch = format!("[{body},{body},{body}]");
    assert_eq!(
        server.post_with("/v1/usage", &bearer, &batch).status,
        400,
        "serve.max_batch applies"
    );
    drop(server);

    // A token file next to the config file, and the flag over both.
    std::fs::write(env.path("tokens.txt"), "# servers\nfrom-file\n").unwrap();
    std::fs::write(
        env.path("afs.toml"),
        "[serve]\ntoken_file = \"tokens.txt\"\n",
    )
    .unwrap();
    let server = env.serve(&[]);
    assert_eq!(server.post("/v1/usage", &body).status, 401);
    assert_eq!(
        server
            .post_with("/v1/usage", &[("Authorization", "Bearer from-file")], &body)
            .status,
        201
    );
    drop(server);
    let server = env.serve(&["--token", "from-flag"]);
    assert_eq!(
        server
            .post_with("/v1/usage", &[("Authorization", "Bearer from-file")], &body)
            .status,
        401,
        "--token replaces the configured tokens"
    );
    assert_eq!(
        server
            .post_with("/v1/usage", &[("Authorization", "Bearer from-flag")], &body)
            .status,
        201
    );
    drop(server);

    // An empty token is refused at start, naming the key.
    std::fs::write(env.path("afs.toml"), "[serve]\ntokens = [\"\"]\n").unwrap();
    let output = env
        .command(None, &["serve", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("serve.tokens"), "{stderr}");

    // The loop's flags need the loop, from the flag or the file.
    std::fs::remove_file(env.path("afs.toml")).unwrap();
    let output = env
        .command(
            None,
            &["serve", "--addr", "127.0.0.1:0", "--train-cmd", "true"],
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--with-loop"));
}

#[test]
fn concurrent_single_record_posts_are_all_committed_with_unique_ids() {
    const THREADS: usize = 64;
    const PER_THREAD: usize = 50;
    let env = created();
    let server = env.serve(&[]);
    let addr = server.addr;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| {
                        let body = record(
                            &format!("thread {t} record {i}"),
                            "m",
                            r#""quality_score":0.5"#,
                        );
                        let response =
                            request(addr, "POST", "/v1/usage", &[], Some(body.as_bytes()));
                        assert_eq!(response.status, 201, "{response:?}");
                        response.json()["id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let ids: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), THREADS * PER_THREAD);
    assert_eq!(unique.len(), ids.len(), "ids are unique");
    assert_eq!(
        total(&server),
        (THREADS * PER_THREAD) as u64,
        "every acknowledged record is committed"
    );
    let stats = server.get("/v1/stats").json();
    assert_eq!(stats["quality_samples"], (THREADS * PER_THREAD) as u64);
}

#[test]
fn sigterm_drains_a_request_in_flight_and_exits_cleanly() {
    let env = created();
    let mut server = env.serve(&[]);
    assert_eq!(
        server.post("/v1/usage", &record("before", "m", "")).status,
        201
    );

    // A request whose body is only half sent when the signal comes.
    let body = format!(
        "[{}]",
        (0..200)
            .map(|i| record(&format!("in flight {i}"), "m", ""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (first, second) = body.as_bytes().split_at(body.len() / 2);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v1/usage HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    )
    .unwrap();
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server waits for the request in flight"
    );
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "no new connection is accepted once draining"
    );
    stream.write_all(second).unwrap();
    let response = read_response(&mut stream);
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(response.json()["ids"].as_array().unwrap().len(), 200);

    let status = server.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}; stderr: {}", server.stderr());
    let stderr = server.stderr();
    assert!(stderr.contains("SIGTERM received: draining"), "{stderr}");
    assert!(stderr.contains("afs serve: stopped"), "{stderr}");
    let stats: Value = serde_json::from_str(&env.afs(None, &["stats", "--json"])).unwrap();
    assert_eq!(
        stats["total"], 201,
        "the drained request's records were committed"
    );
}

#[test]
fn the_loop_runs_in_the_same_process_and_stops_on_sigterm() {
    let env = created();
    let train = "printf '{\"model_path\": \"/models/trained\"}\\n'";
    let mut server = env.serve(&[
        "--with-loop",
        "--train-cmd",
        train,
        "--check-interval",
        "1h",
        "--champion",
        "nayru-v1",
        "--champion-path",
        "/models/nayru-v1",
    ]);
    // The first iteration runs at once; wait for it to be recorded.
    let mut iterations = 0;
    for _ in 0..200 {
        iterations = server.get("/v1/status").json()["status"]["iterations"]
            .as_u64()
            .unwrap();
        if iterations >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(iterations >= 1, "the loop ran an iteration");
    let status = server.get("/v1/status").json();
    assert_eq!(status["server"]["with_loop"], true);
    assert_eq!(status["status"]["champion_model"], "nayru-v1");
    assert_eq!(server.get("/v1/route?unit=u1").json()["model"], "nayru-v1");
    assert!(server
        .get("/metrics")
        .body
        .contains("afs_loop_iterations_total{outcome=\"ok\"} 1"));

    server.sigterm();
    let exit = server.wait(Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}: {}", server.stderr());
    assert!(
        server.stderr().contains("loop stopped after 1 iteration"),
        "{}",
        server.stderr()
    );

    // --with-loop needs a trainer command.
    let output = env
        .command(None, &["serve", "--addr", "127.0.0.1:0", "--with-loop"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--train-cmd"));
}

#[test]
fn the_help_documents_serve_and_has_no_load_generator() {
    let env = Env::new();
    let help = env.afs(None, &["serve", "--help"]);
    for needle in [
        "Examples:",
        "--addr",
        "--token",
        "AFS_TOKENS",
        "--with-loop",
        "--max-body-bytes",
        "docs/SERVICE.md",
    ] {
        assert!(
            help.contains(needle),
            "afs serve --help lacks {needle:?}:\n{help}"
        );
    }
    assert!(
        !help.contains("Generate load"),
        "no load generator in afs:\n{help}"
    );
    // The load generator moved to the bench harness: `afs serve load` is no subcommand.
    let output = env
        .command(None, &["serve", "load", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unexpected argument"),
        "{output:?}"
    );
}

#[test]
fn conversations_are_accepted_alone_and_in_batches_and_bad_turns_are_named() {
    let env = created();
    let server = env.serve(&[]);
    let chat = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]);
    let one = json!({"model": "m", "messages": chat}).to_string();
    assert_eq!(server.post("/v1/usage", &one).status, 201);
    let batch = json!({"records": [
        {"model": "m", "messages": chat, "query": "2+2?", "response": "4"},
        {"query": "q", "response": "r", "model": "m"},
    ]})
    .to_string();
    assert_eq!(server.post("/v1/usage", &batch).status, 201);
    let post =
        |body: &str, field: &str| check(&server, "POST", "/v1/usage", Some(body), 400, Some(field));
    post(
        r#"{"model":"m","messages":[{"role":"user","content":"q"},{"role":"bot","content":"a"}]}"#,
        "messages[1].role",
    );
    post(
        r#"{"model":"m","messages":[{"role":"assistant","content":"a"},{"role":"user","content":"q"}]}"#,
        "messages",
    );
    post(
        r#"[{"query":"q","response":"r","model":"m"},{"model":"m","messages":[{"role":"user","content":"q"},{"role":"assistant","content":7}]}]"#,
        "records[1].messages[1].content",
    );
    post(
        r#"{"model":"m","query":"Hi","messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"a"},{"role":"user","content":"q"},{"role":"assistant","content":"b"}]}"#,
        "query",
    );
    assert_eq!(total(&server), 3);
    let records: Vec<Value> = env
        .afs(None, &["records"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records[0]["messages"], chat);
    assert_eq!(records[0]["query"], "2+2?");
    assert_eq!(records[1]["messages"], chat);
    assert!(records[2].get("messages").is_none());
}

//! Apps reach their data: the `todo` sample on a real PostgreSQL and the `counter` sample on a
//! real Redis, through host sockets, with every fault the issue lists: an unreachable database
//! at `init`, a database or Redis restart under traffic, a host the allowlist does not grant,
//! an exhausted pool, clients that leave mid-query, and a swap under load.

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};

use crate::harness::{Berth, Req, admin_apps, app_entry, post, send, try_send, wait_for_apps};
use crate::services::{Postgres, Redis};
use crate::upstream::{Upstream, small_body};

/// The `application_name` the `todo` app's connections carry, so that `pg_stat_activity` tells
/// them from `psql`'s.
const APP_NAME: &str = "berth-todo";

/// How long recovery after a restart may take.
const RECOVERY: Duration = Duration::from_secs(15);

/// `berth.toml` for `todo` on `postgres`, with `extra` settings lines.
fn todo_config(postgres: &Postgres, extra: &str) -> String {
    format!(
        "[apps.todo]\n\
         allowed_outbound_hosts = [\"postgres://127.0.0.1:{port}\"]\n\
         request_timeout = 10\n\
         [apps.todo.settings]\n\
         database_url = \"{url}?application_name={APP_NAME}\"\n\
         {extra}",
        port = postgres.port(),
        url = postgres.url("postgres"),
    )
}

fn start_todo(postgres: &Postgres, extra: &str) -> Berth {
    Berth::builder()
        .app("todo")
        .config(&todo_config(postgres, extra))
        .start()
}

async fn json_request(berth: &Berth, method: Method, path: &str, body: &Value) -> (u16, Value) {
    let url = berth.url(path);
    let body = body.to_string();
    let reply = send(Req {
        method,
        headers: &[("content-type", "application/json")],
        body: body.as_bytes(),
        ..Req::get(&url)
    })
    .await;
    let value = if reply.body.is_empty() {
        Value::Null
    } else {
        reply.json()
    };
    (reply.status.as_u16(), value)
}

/// Creates one item through the app; returns it and its URL.
async fn one_item(berth: &Berth) -> (Value, String) {
    let (status, item) =
        json_request(berth, Method::POST, "/todo/items", &json!({"title": "a"})).await;
    assert_eq!(status, 201, "{item}");
    let url = berth.url(&format!("/todo/items/{}", item["id"]));
    (item, url)
}

/// The backend pids of the app's connections, as PostgreSQL sees them.
fn app_backends(postgres: &Postgres) -> Vec<u32> {
    let out = postgres.psql(&format!(
        "select pid from pg_stat_activity where application_name = '{APP_NAME}' order by pid"
    ));
    out.lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// The `application_name` of the `psql` session that holds the lock.
const LOCKER: &str = "berth-test-lock";

/// Holds an exclusive lock on the table in a `psql` session of its own until [`unlock`], so
/// that the app's queries on it wait: requests in flight, on demand.
fn lock_table(postgres: &Postgres) -> Child {
    let child = postgres.psql_background(
        LOCKER,
        "BEGIN; LOCK TABLE todo_items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);",
    );
    let started = Instant::now();
    while postgres
        .psql("select count(*) from pg_locks where mode = 'AccessExclusiveLock' and relation = 'todo_items'::regclass")
        != "1"
    {
        assert!(started.elapsed() < Duration::from_secs(10), "psql took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Ends the locking session on the server (killing `psql` alone would leave its backend
/// asleep, holding the lock), and its `psql`.
fn unlock(postgres: &Postgres, mut child: Child) {
    postgres.psql(&format!(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = '{LOCKER}'"
    ));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todo_serves_its_json_api_from_postgres() {
    let postgres = Postgres::start();
    let berth = start_todo(&postgres, "");

    let (status, first) = json_request(
        &berth,
        Method::POST,
        "/todo/items",
        &json!({"title": "milk"}),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["title"], "milk");
    assert_eq!(first["done"], false);
    let id = first["id"].as_i64().expect("an integer id");
    let (status, second) = json_request(
        &berth,
        Method::POST,
        "/todo/items",
        &json!({"title": "eggs"}),
    )
    .await;
    assert_eq!(status, 201);
    assert!(second["id"].as_i64() > Some(id));

    let (status, list) = json_request(&berth, Method::GET, "/todo/items", &Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([first, second]), "in id order");
    let (status, one) = json_request(
        &berth,
        Method::GET,
        &format!("/todo/items/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!((status, &one), (200, &first));

    let (status, patched) = json_request(
        &berth,
        Method::PATCH,
        &format!("/todo/items/{id}"),
        &json!({"done": true, "title": "oat milk"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        patched,
        json!({"id": id, "title": "oat milk", "done": true})
    );
    // A client nobody here wrote sees the same row.
    assert_eq!(
        postgres.psql(&format!(
            "select title || '|' || done from todo_items where id = {id}"
        )),
        "oat milk|true"
    );

    let (status, _) = json_request(
        &berth,
        Method::DELETE,
        &format!("/todo/items/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 204);
    let (status, missing) = json_request(
        &berth,
        Method::GET,
        &format!("/todo/items/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 404, "{missing}");
    let (status, _) = json_request(
        &berth,
        Method::PATCH,
        &format!("/todo/items/{id}"),
        &json!({"done": false}),
    )
    .await;
    assert_eq!(status, 404);

    // Bad input: a clear 400 with the reason, and nothing written.
    let url = berth.url("/todo/items");
    let reply = send(Req {
        method: Method::POST,
        body: b"{\"title\": ",
        ..Req::get(&url)
    })
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("invalid JSON"), "{}", reply.text());
    let (status, reason) =
        json_request(&berth, Method::POST, "/todo/items", &json!({"name": "x"})).await;
    assert_eq!(status, 400);
    assert!(
        reason["error"]
            .as_str()
            .is_some_and(|e| e.contains("title")),
        "{reason}"
    );
    let (status, _) = json_request(&berth, Method::GET, "/todo/items/seven", &Value::Null).await;
    assert_eq!(status, 404);
    assert_eq!(postgres.psql("select count(*) from todo_items"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn todo_speaks_tls_to_postgres_when_the_url_asks_for_it() {
    let postgres = Postgres::start();
    let pki = crate::tls::Pki::new();
    postgres.enable_tls(&pki.cert_pem, &pki.key_pem);
    let config = todo_config(&postgres, "").replace(
        &format!("application_name={APP_NAME}"),
        &format!("application_name={APP_NAME}&sslmode=require"),
    );
    // The server's certificate is signed by the test CA, which Berth trusts through
    // outbound_ca_file (and nothing else does).
    let berth = Berth::builder()
        .app("todo")
        .config(&config)
        .args(&["--outbound-ca-file", &pki.arg("ca.pem")])
        .start();
    let (status, item) = json_request(
        &berth,
        Method::POST,
        "/todo/items",
        &json!({"title": "tls"}),
    )
    .await;
    assert_eq!(status, 201, "{item}");
    let encrypted = postgres.psql(&format!(
        "select bool_and(s.ssl) from pg_stat_ssl s join pg_stat_activity a using (pid) \
         where a.application_name = '{APP_NAME}'"
    ));
    assert_eq!(encrypted, "t", "every connection of the app is encrypted");

    // Without the CA, the certificate does not verify: init fails and says so.
    let berth = Berth::builder().app("todo").config(&config).start();
    let failed = admin_apps(&berth).await["failed"].to_string();
    assert!(failed.contains("certificate"), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_keeps_todo_unmounted_with_the_reason() {
    let postgres = Postgres::start();
    postgres.stop();
    let berth = start_todo(&postgres, "");
    let apps = admin_apps(&berth).await;
    assert!(app_entry(&apps, "todo").is_none(), "not mounted: {apps:#}");
    let failed = apps["failed"].to_string();
    assert!(
        failed.contains("init") && failed.contains(&postgres.port().to_string()),
        "the reason names the database: {failed}"
    );
    berth
        .wait_for_log(&["todo", "init", "127.0.0.1"], Duration::from_secs(5))
        .await;
    let reply = try_send(Req::get(&berth.url("/todo/items")))
        .await
        .expect("an answer");
    assert_eq!(reply.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_the_allowlist_does_not_grant_gets_no_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("addr").port();
    let config = format!(
        "[apps.todo]\n\
         allowed_outbound_hosts = [\"postgres://127.0.0.1:1\"]\n\
         [apps.todo.settings]\n\
         database_url = \"postgres://berth@127.0.0.1:{port}/postgres\"\n"
    );
    let berth = Berth::builder().app("todo").config(&config).start();
    let apps = admin_apps(&berth).await;
    assert!(app_entry(&apps, "todo").is_none(), "not mounted: {apps:#}");
    let failed = apps["failed"].to_string();
    assert!(
        failed.contains("allowed_outbound_hosts") && failed.contains(&format!("127.0.0.1:{port}")),
        "the reason says what was denied and by what: {failed}"
    );
    assert!(
        matches!(listener.accept(), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
        "no connection was opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_fails_requests_in_flight_with_503_then_recovers() {
    let postgres = Postgres::start();
    let mut berth = start_todo(&postgres, "pool_size = 2\n");
    let (item, url) = one_item(&berth).await;

    // Two requests in flight, waiting on a lock, when the database goes down.
    let lock = lock_table(&postgres);
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { try_send(Req::get(&url)).await })
        })
        .collect();
    let started = Instant::now();
    while postgres.psql(&format!(
        "select count(*) from pg_stat_activity where application_name = '{APP_NAME}' and wait_event_type = 'Lock'"
    )) != "2"
    {
        assert!(started.elapsed() < Duration::from_secs(10), "both requests wait on the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    postgres.stop();
    // The server took the lock's session with it.
    let mut lock = lock;
    let _ = (lock.kill(), lock.wait());
    for request in in_flight {
        let reply = request.await.expect("join").expect("an answer");
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            reply.text().contains("database"),
            "a reason: {}",
            reply.text()
        );
    }
    // While it is down: 503 with a reason, at once rather than at the deadline.
    let down = Instant::now();
    let reply = try_send(Req::get(&url)).await.expect("an answer");
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        down.elapsed() < Duration::from_secs(5),
        "{:?}",
        down.elapsed()
    );

    postgres.resume();
    let back = Instant::now();
    loop {
        let reply = try_send(Req::get(&url)).await.expect("an answer");
        if reply.status == 200 {
            assert_eq!(reply.json(), item);
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            back.elapsed() < RECOVERY,
            "recovered within {RECOVERY:?}: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(berth.is_running(), "no restart of Berth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_makes_requests_wait_then_answers_503() {
    let postgres = Postgres::start();
    let berth = start_todo(&postgres, "pool_size = 1\npool_wait = 1\n");
    let (_, url) = one_item(&berth).await;

    // The one connection waits on a lock; the next request waits for it, then gives up.
    let lock = lock_table(&postgres);
    let holder = {
        let url = url.clone();
        tokio::spawn(async move { try_send(Req::get(&url)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waited = Instant::now();
    let reply = try_send(Req::get(&url)).await.expect("an answer");
    let waited = waited.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        reply.text().contains("pool"),
        "the reason: {}",
        reply.text()
    );
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(5)).contains(&waited),
        "waited about pool_wait (1 s): {waited:?}"
    );
    unlock(&postgres, lock);
    let reply = holder.await.expect("join").expect("an answer");
    assert_eq!(
        reply.status,
        200,
        "the holder finishes once the lock goes: {}",
        reply.text()
    );
    let reply = try_send(Req::get(&url)).await.expect("an answer");
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_mid_query_leak_no_connection() {
    let postgres = Postgres::start();
    let berth = start_todo(&postgres, "pool_size = 3\n");
    let (_, url) = one_item(&berth).await;

    let lock = lock_table(&postgres);
    // Twelve clients, four rounds of the pool's size, each gone after 200 ms.
    for _ in 0..12 {
        let request = try_send(Req::get(&url));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), request)
                .await
                .is_err(),
            "the query waits on the lock"
        );
    }
    unlock(&postgres, lock);
    // Every request succeeds again, and the app holds no more connections than its pool.
    for _ in 0..10 {
        let reply = try_send(Req::get(&url)).await.expect("an answer");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let backends = app_backends(&postgres);
    assert!(
        (1..=3).contains(&backends.len()),
        "at most pool_size connections: {backends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_of_todo_under_load_fails_nothing_and_closes_the_old_sockets() {
    let postgres = Postgres::start();
    let mut berth = start_todo(&postgres, "pool_size = 4\n");
    let (_, url) = one_item(&berth).await;

    // Warm the old version's pool, and remember its connections.
    let warm: Vec<_> = (0..8).map(|_| try_send(Req::get(&url))).collect();
    for reply in futures_util::future::join_all(warm).await {
        assert_eq!(reply.expect("an answer").status, 200);
    }
    let old = app_backends(&postgres);
    assert!(!old.is_empty(), "the old version holds connections");

    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, failed, done) = (url.clone(), Arc::clone(&failed), Arc::clone(&done));
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(3);
                for _ in 0..2_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    match try_send(Req::get(&url)).await {
                        Ok(reply) if reply.status == 200 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reload = post(&berth.admin_url("/apps/todo/reload")).await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    for task in load {
        task.await.expect("load task");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "of {} requests",
        done.load(Ordering::SeqCst)
    );

    // The old version is retired after its last request, and its connections are gone.
    wait_for_apps(
        &berth,
        "no version retiring",
        Duration::from_secs(10),
        |apps| apps["retiring"].as_array().is_some_and(Vec::is_empty),
    )
    .await;
    let started = Instant::now();
    loop {
        let now = app_backends(&postgres);
        if now.iter().all(|pid| !old.contains(pid)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the old version's connections {old:?} closed; still open: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let apps = admin_apps(&berth).await;
    let todo = app_entry(&apps, "todo").expect("mounted");
    assert!(todo["sockets"].as_u64().is_some_and(|n| n <= 4), "{todo}");
    let reply = try_send(Req::get(&url)).await.expect("an answer");
    assert_eq!(reply.status, 200);
    assert!(berth.is_running(), "still serving");
}

fn counter_config(redis: &Redis, upstream: Option<&Upstream>) -> String {
    let upstream = upstream.map_or(String::new(), |u| {
        format!(", \"http://127.0.0.1:{}\"", u.port())
    });
    format!(
        "[apps.counter]\n\
         allowed_outbound_hosts = [\"redis://127.0.0.1:{port}\"{upstream}]\n\
         [apps.counter.settings]\n\
         redis_url = \"{url}\"\n",
        port = redis.port(),
        url = redis.url(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_counts_in_redis_and_caches_fetches() {
    let redis = Redis::start();
    let upstream = Upstream::start();
    let berth = Berth::builder()
        .app("counter")
        .config(&counter_config(&redis, Some(&upstream)))
        .start();

    let reply = try_send(Req::get(&berth.url("/counter/visits")))
        .await
        .expect("an answer");
    assert_eq!(reply.json(), json!({"key": "visits", "value": 0}));
    for expected in 1..=3 {
        let reply = post(&berth.url("/counter/visits")).await;
        assert_eq!(reply.json(), json!({"key": "visits", "value": expected}));
    }
    assert_eq!(
        redis.cli(&["get", "counter:visits"]),
        "3",
        "in Redis itself"
    );
    let reply = try_send(Req::get(&berth.url("/counter/visits")))
        .await
        .expect("an answer");
    assert_eq!(reply.json()["value"], 3);

    let cached = berth.url(&format!(
        "/counter/cached?url={}&ttl=1",
        crate::harness::encode(&upstream.url("/small"))
    ));
    let header = |reply: &crate::harness::Reply| {
        reply
            .headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let first = try_send(Req::get(&cached)).await.expect("an answer");
    assert_eq!(
        (first.status.as_u16(), header(&first).as_deref()),
        (200, Some("miss"))
    );
    assert_eq!(first.body, small_body());
    let connections = upstream.connections();
    let second = try_send(Req::get(&cached)).await.expect("an answer");
    assert_eq!(
        (second.status.as_u16(), header(&second).as_deref()),
        (200, Some("hit"))
    );
    assert_eq!(second.body, small_body());
    assert_eq!(upstream.connections(), connections, "a hit does not fetch");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let third = try_send(Req::get(&cached)).await.expect("an answer");
    assert_eq!(header(&third).as_deref(), Some("miss"), "expired after ttl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_requests_with_503_then_counter_recovers() {
    let mut redis = Redis::start();
    let berth = Berth::builder()
        .app("counter")
        .config(&counter_config(&redis, None))
        .start();
    let url = berth.url("/counter/hits");
    assert_eq!(post(&url).await.json()["value"], 1);

    redis.stop();
    let reply = try_send(Req {
        method: Method::POST,
        ..Req::get(&url)
    })
    .await
    .expect("an answer");
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("Redis"), "{}", reply.text());

    redis.resume();
    let back = Instant::now();
    loop {
        let reply = try_send(Req {
            method: Method::POST,
            ..Req::get(&url)
        })
        .await
        .expect("an answer");
        if reply.status == 200 {
            // Nothing was saved across the restart: counting starts again.
            assert_eq!(reply.json()["value"], 1);
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            back.elapsed() < RECOVERY,
            "recovered within {RECOVERY:?}: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

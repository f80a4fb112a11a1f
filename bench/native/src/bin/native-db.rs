//! The `todo` app's `GET /todo/items/{id}` compiled straight into a hyper server: per request,
//! take a connection from a deadpool-postgres pool, run `SELECT id, title, done FROM todo_items
//! WHERE id = $1` as a statement prepared once per connection (`prepare_cached`) with
//! `query_opt`, and answer the row as JSON (`{"done", "id", "title"}`), `404` when there is no
//! such row, `503` when no connection is to be had within 2 s, as the app does. The pool is
//! deadpool-postgres's defaults (`RecyclingMethod::Fast`: a connection is only checked for being
//! closed when it is taken) with `--pool-size` connections, opened on demand.
//!
//! Before it listens it connects once and creates the table when it is missing, as the app's
//! `init` does, so that an unreachable database stops it at once.
//!
//! Run with: `cargo run --release -p berth-bench --bin native-db -- --listen 127.0.0.1:8084
//! --database-url postgres://berth@127.0.0.1:5432/postgres`, then
//! `curl http://127.0.0.1:8084/todo/items/1`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use berth_bench::{Body, error_chain};
use clap::Parser;
use deadpool_postgres::{Manager, Pool, PoolError, Runtime};
use http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

/// A native hyper server answering `GET /todo/items/{id}` from PostgreSQL.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve HTTP/1.1 and HTTP/2 cleartext on.
    #[arg(long, default_value = "127.0.0.1:8084")]
    listen: SocketAddr,
    /// The database, as a tokio-postgres URL (`postgres://user@host:port/dbname`).
    #[arg(long)]
    database_url: String,
    /// The most connections the pool opens.
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
}

/// The table, as the `todo` app's `init` creates it.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS todo_items (
    id BIGSERIAL PRIMARY KEY,
    title TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false
)";

/// The one query this server runs, as the app runs it.
const SHOW: &str = "SELECT id, title, done FROM todo_items WHERE id = $1";

/// How long a request waits for a free connection before it is answered `503` (the app's
/// `pool_wait` default).
const POOL_WAIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args = Args::parse();
    let served = berth_bench::serve_with(args.listen, async move {
        let config: tokio_postgres::Config = args
            .database_url
            .parse()
            .context("--database-url is not a PostgreSQL URL")?;
        let pool = Pool::builder(Manager::new(config, NoTls))
            .max_size(args.pool_size)
            .wait_timeout(Some(POOL_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .context("cannot build the pool")?;
        let client = pool.get().await.context("cannot connect to the database")?;
        client
            .batch_execute(SCHEMA)
            .await
            .context("cannot create the table")?;
        drop(client);
        Ok(move |request: Request<_>| {
            let pool = pool.clone();
            let route = route(request.method(), request.uri().path());
            async move {
                match route {
                    Ok(id) => show(&pool, id).await,
                    Err((status, reason)) => failure(status, reason),
                }
            }
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-db: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The item id of `GET /todo/items/{id}`, or the status and reason to answer anything else with.
fn route(method: &Method, path: &str) -> Result<i64, (StatusCode, String)> {
    let Some(id) = path.trim_end_matches('/').strip_prefix("/todo/items/") else {
        return Err((
            StatusCode::NOT_FOUND,
            "no such route: try /todo/items/{id}".into(),
        ));
    };
    let Ok(id) = id.parse::<i64>() else {
        return Err((StatusCode::NOT_FOUND, "an item's id is an integer".into()));
    };
    if method != Method::GET {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here".into(),
        ));
    }
    Ok(id)
}

/// The item `id` as JSON, or the failure the app would answer with.
async fn show(pool: &Pool, id: i64) -> Response<Body> {
    let client = match pool.get().await {
        Ok(client) => client,
        // No connection to be had: the database is down, or every connection stayed busy.
        Err(err) => return failure(StatusCode::SERVICE_UNAVAILABLE, pool_error(&err)),
    };
    let row = match client.prepare_cached(SHOW).await {
        Ok(statement) => client.query_opt(&statement, &[&id]).await,
        Err(err) => Err(err),
    };
    match row {
        Ok(Some(row)) => json_response(StatusCode::OK, &item(&row)),
        Ok(None) => failure(StatusCode::NOT_FOUND, format!("no item {id}")),
        Err(err) if err.is_closed() => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database connection lost: {err}"),
        ),
        Err(err) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("database error: {}", error_chain(&err)),
        ),
    }
}

fn item(row: &tokio_postgres::Row) -> Value {
    json!({
        "id": row.get::<_, i64>(0),
        "title": row.get::<_, String>(1),
        "done": row.get::<_, bool>(2),
    })
}

fn pool_error(err: &PoolError) -> String {
    match err {
        PoolError::Timeout(_) => format!("no free database connection within {POOL_WAIT:?}"),
        other => error_chain(other),
    }
}

fn failure(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": reason.into() }))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    berth_bench::respond(status, "application/json", value.to_string())
}
